"""Ops: one native definition, many impls, and the eager call path.

``register_op`` turns a plain, type-annotated PyTorch function into an
:class:`Op`. The function is the op's specification, its fallback (provider
``native``) and its default fake implementation. The op is also defined as
``torch.ops.opir.<name>`` (functional schema, ``CompositeExplicitAutograd``) so
that tracers see one opaque node.

Calling ``op(*args)`` picks the first impl in the op's priority whose
predicate accepts the arguments. In plain eager mode that happens in the
generated fast path (``hotpath.py``); whenever something could be watching
(Dynamo, export, make_fx, FakeTensor, functionalization, any dispatch mode, a
functorch transform, a tensor subclass) the call goes through the torch op
instead, whose kernel runs the very same selection.

Ops are inference-only. Called with inputs that require grad (grad mode on),
the chosen kernel still runs eagerly, and its outputs carry a grad_fn whose
backward raises a clear error instead of silently dropping gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import torch

from opir.core import registry as _registry
from opir.core import scope as _scope
from opir.core import signature as _signature
from opir.core import torch_library as _torch_library
from opir.core.errors import RegistrationError
from opir.core.hotpath import make_call, specialize
from opir.core.impl import Impl
from opir.core.priority import Entry, Priority, build_priority, validate_providers
from opir.core.selection import Selection, explain, select_in_scope
from opir.core.tolerances import Tolerance, default_tolerance

RESERVED_PROVIDERS = frozenset({"native"})

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get
_DelayedError = torch._C._functions.DelayedError


class _Overload:
    """What the default overload (the op itself) and ``maybe_inplace`` share.

    The eager fast path, ``__call__``, is generated per op and installed on a
    per-op subclass; everything off that path lives here.
    """

    op: Op
    torch_op: torch._ops.OpOverload
    _entries: tuple[Entry, ...]
    _donating: bool
    _overload_name: str

    def _entries_of(self, priority: Priority, impl: Impl) -> Callable[..., Any]:
        return priority.entries(self._donating)[priority.impls.index(impl)][1]

    def _call_selecting(self, args: tuple) -> Any:
        """Eager call inside a tracing or strict scope: the full selection."""
        op, scope = self.op, _scope_get()
        priority = op.current_priority()
        impl = select_in_scope(op.name, self._overload_name, priority, args, scope, "eager")
        fn = self._entries_of(priority, impl)
        if _grad_enabled() and any(
            isinstance(a, _Tensor) and a.requires_grad for a in args
        ):
            return self._call_refusing_backward(((None, fn),), args)
        return fn(*args)

    def _call_refusing_backward(self, entries: tuple[Entry, ...], args: tuple) -> Any:
        """Inputs require grad: run the kernel eagerly, make backward raise."""
        for pred, fn in entries:
            if pred is None or pred(*args):
                return _refuse_backward(fn(*args), self.op.backward_error)
        raise AssertionError("a priority always ends with an unconditional impl")

    def _kernel(self, *args: Any, **kwargs: Any) -> Any:
        """The torch op's kernel: the same selection as the eager path."""
        op = self.op
        args = op.complete_args(args, kwargs)
        priority = op.current_priority()
        impl = select_in_scope(
            op.name, self._overload_name, priority, args, _scope_get(), "torch_op"
        )
        return self._entries_of(priority, impl)(*args)


class MaybeInplace(_Overload):
    """``op.maybe_inplace(...)``: activations are donated to in-place impls.

    After the call the donated inputs may hold anything; use the outputs.
    Under torch.compile a use of a donated input after the call is an error.
    Inputs that require grad are refused (a donated buffer cannot be part of
    an autograd graph).

    Example::

        out, residual = opir.ops.fused_add_rms_norm.maybe_inplace(x, residual, w, 1e-6)
    """

    _donating = True
    _overload_name = "maybe_inplace"

    def __init__(self, op: Op) -> None:
        self.op = op
        self._entries = ()  # set by op.refresh_priority(); torch_op once defined

    def _call_refusing_backward(self, entries: tuple[Entry, ...], args: tuple) -> Any:
        return self.torch_op(*args)  # its Autograd kernel raises the clear error

    def __repr__(self) -> str:
        return f"<opir op {self.op.name}.maybe_inplace>"


class Op(_Overload):
    """An opir operator. Create with :func:`register_op`; call like a function.

    Example::

        @opir.register_op
        def scale(x: torch.Tensor, alpha: float) -> torch.Tensor:
            return x * alpha

        @scale.register_impl("mine", supports_args=lambda x, alpha: x.is_contiguous())
        def scale_mine(x: torch.Tensor, alpha: float) -> torch.Tensor: ...

        scale(torch.ones(3), 2.0)
    """

    _donating = False
    _overload_name = "default"

    def __init__(self, fn: Callable, name: str, sig: _signature.OpSignature) -> None:
        self.name = name
        self.native = fn
        self.sig = sig
        self.schema = sig.schema
        self.signature = sig.signature
        self.activations = sig.activations
        self.activation_positions = sig.activation_positions
        self.allow_inplace = sig.inplace_schema is not None
        self._impls: dict[str, Impl] = {"native": Impl(name, "native", fn)}
        self._fake_fn: Callable = fn
        self._user_priority: tuple[str, ...] = ()
        self._priority: Priority | None = None
        self._entries = ()
        self._tolerances: dict[torch.dtype, Tolerance] = {}
        self._input_generator: Callable[..., tuple] | None = None
        self.maybe_inplace: MaybeInplace | None = None
        self.backward_error = (
            f"opir op '{name}' is an inference op and has no backward. Run it under "
            "torch.inference_mode() / torch.no_grad(), or differentiate the spec instead: "
            f"opir.ops.{name}.native(...)"
        )
        self.__doc__ = fn.__doc__

    @property
    def op(self) -> Op:
        """An op is its own default overload (``maybe_inplace`` is the other)."""
        return self

    # ------------------------------------------------------------------ impls
    @property
    def impls(self) -> Mapping[str, Impl]:
        """Registered impls by provider name (``native`` first)."""
        return self._impls

    def register_impl(
        self,
        provider: str,
        *,
        supported: bool = True,
        supports_args: Callable[..., bool] | None = None,
        inplace: bool = False,
        reason: str = "",
    ) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` as ``provider``'s kernel for this op.

        ``supported``: static platform/library availability (``reason`` says
        why not). ``supports_args``: per-call argument check with exactly the
        op's parameter names and defaults, returning a plain bool, also for
        fake tensors. Enable or disable providers through priority, never
        inside these predicates. ``inplace=True`` (only for ``allow_inplace``
        ops) lets the kernel write into the activations and return them.
        Returns ``fn`` unchanged.

        Example::

            @opir.ops.rms_norm.register_impl("mine", supports_args=my_check)
            def my_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0): ...
        """
        _signature.check_name("provider", provider)
        if provider in RESERVED_PROVIDERS:
            raise RegistrationError(
                f"provider name '{provider}' is reserved for the op's own function"
            )
        self._check_new_provider(provider)
        if not isinstance(supported, bool):
            raise RegistrationError(
                f"supported must be a bool (platform availability), got {supported!r}"
            )
        if inplace and not self.allow_inplace:
            raise RegistrationError(
                f"op '{self.name}' was not registered with allow_inplace=True, so provider "
                f"'{provider}' cannot register an inplace impl"
            )
        if supports_args is not None:
            what = f"provider '{provider}' for op '{self.name}'"
            _signature.check_predicate(what, self.sig, supports_args)

        def decorator(fn: Callable) -> Callable:
            what = f"impl '{provider}' of op '{self.name}'"
            _signature.check_same_schema(fn, self.schema, what)
            self._check_new_provider(provider)
            impl = Impl(self.name, provider, fn, supported, supports_args, inplace, reason)
            self._impls[provider] = impl
            self.refresh_priority()
            return fn

        return decorator

    def _check_new_provider(self, provider: str) -> None:
        if provider in self._impls:
            raise RegistrationError(f"op '{self.name}' already has a '{provider}' impl")

    def register_fake(self, fn: Callable) -> Callable:
        """Replace the fake (meta) implementation; default is the native function."""
        _signature.check_same_schema(fn, self.schema, f"fake of op '{self.name}'")
        self._fake_fn = fn
        return fn

    def withdraw_impl(self, provider: str, reason: str) -> None:
        """Mark ``provider``'s impl unsupported from now on (e.g. its build failed).

        Priorities are rebuilt, so later calls skip it as if it had been
        registered with ``supported=False, reason=reason``.
        """
        impl = self._impls[provider]
        self._impls[provider] = dataclasses.replace(impl, supported=False, reason=reason)
        self.refresh_priority()

    def explicitly_requested(self, provider: str) -> bool:
        """True if the user listed ``provider`` for this op (process default or scope),
        as opposed to reaching it through the platform defaults."""
        return provider in self.current_priority().user

    def unregister_impl(self, provider: str) -> None:
        """Remove an impl (tests and benchmarks use transient providers)."""
        if provider == "native":
            raise RegistrationError("the native impl cannot be removed")
        del self._impls[provider]
        self._user_priority = tuple(p for p in self._user_priority if p != provider)
        self.refresh_priority()

    # --------------------------------------------------------------- priority
    def set_default(self, providers: Sequence[str]) -> None:
        """Set this op's process-wide priority (platform defaults follow it).

        Example: ``opir.ops.rms_norm.set_default(["cpu", "native"])``
        """
        self._user_priority = validate_providers(self, providers)
        self.refresh_priority()

    @contextlib.contextmanager
    def set_priority(self, providers: Sequence[str]) -> Iterator[None]:
        """Scoped priority for this op: this thread / asyncio task only, nestable.

        Example::

            with opir.ops.rms_norm.set_priority(["native"]):
                y = opir.ops.rms_norm(x, w, 1e-6)
        """
        priority = build_priority(self, validate_providers(self, providers))
        with _scope.overriding({self: priority}):
            yield

    def get_priority(self) -> list[str]:
        """The effective, filtered priority in the current scope, as provider names."""
        return self.current_priority().providers

    def current_priority(self) -> Priority:
        """The :class:`Priority` in effect in the current scope."""
        scope = _scope_get()
        if scope is not None and self in scope.priorities:
            return scope.priorities[self]
        return self._priority

    def compile_priority(self, fixed: Sequence[str] | None = None) -> Priority:
        """The priority lowering uses: ``fixed`` (or the user's entries in effect), then
        the platform defaults measured for compiled graphs."""
        user = self.current_priority().user if fixed is None else fixed
        return build_priority(self, user, mode="compile")

    def refresh_priority(self) -> None:
        """Rebuild the process-wide priority (after impls or platform defaults change)."""
        _registry.bump_epoch()
        priority = build_priority(self, self._user_priority)
        self._priority = priority
        self._entries = priority.functional
        if self.maybe_inplace is not None:
            self.maybe_inplace._entries = priority.donating

    # --------------------------------------------------------------- dispatch
    def complete_args(self, args: tuple, kwargs: Mapping[str, Any] | None = None) -> tuple:
        """All parameters positionally, defaults filled: what impls always receive."""
        if not kwargs and len(args) == len(self.sig.names):
            return tuple(args)
        try:
            bound = self.signature.bind(*args, **(kwargs or {}))
        except TypeError as e:
            raise TypeError(
                f"opir op '{self.name}': {e}. Signature: {self.name}{self.sig.param_list()}"
            ) from None
        bound.apply_defaults()
        return bound.args

    def select(self, args: tuple, priority: Priority | None = None) -> Selection:
        """The impl these complete (real or fake) arguments would run, and why the
        providers before it were passed over."""
        return explain(priority or self.current_priority(), args)

    def dispatch(self, *args: Any, priority: Priority | None = None, **kwargs: Any) -> Impl:
        """The impl a call with these (real or fake) arguments would run.

        Example: ``opir.ops.rms_norm.dispatch(x, w, 1e-6).provider`` -> ``'cpu'``
        """
        return self.select(self.complete_args(args, kwargs), priority).impl

    # ----------------------------------------------------------- torch hooks
    def _fake(self, *args: Any) -> Any:
        return self._fake_fn(*args)

    def _refuse_backward(self, ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(self.backward_error)

    def _refuse_grad_donation(self, *args: Any) -> Any:
        if _grad_enabled() and any(isinstance(a, _Tensor) and a.requires_grad for a in args):
            raise RuntimeError(
                f"{self.name}.maybe_inplace donates its inputs and cannot be used with tensors "
                "that require grad; run under torch.inference_mode() / torch.no_grad() or call "
                "the functional op"
            )
        with torch._C._AutoDispatchBelowAutograd():
            return self.maybe_inplace.torch_op(*args)

    # ----------------------------------------------------- numerics metadata
    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        """(atol, rtol) an impl must meet against native for outputs of ``dtype``."""
        return self._tolerances.get(dtype) or default_tolerance(dtype)

    def override_tolerance(self, dtype: torch.dtype, *, atol: float, rtol: float) -> None:
        """Set this op's tolerance for ``dtype`` (e.g. when the contract rounds twice)."""
        self._tolerances[dtype] = Tolerance(atol, rtol)

    def register_input_generator(self, fn: Callable[..., tuple]) -> Callable[..., tuple]:
        """Declare ``fn(*, dtype, device, generator, **shape) -> args`` for tests/benchmarks."""
        self._input_generator = fn
        return fn

    def sample_inputs(
        self,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **shape: Any,
    ) -> tuple:
        """Arguments for one call, made by the op's input generator.

        Example: ``opir.ops.rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=8)``
        """
        if self._input_generator is None:
            raise NotImplementedError(
                f"op '{self.name}' has no input generator; add one with "
                f"@{self.name}.register_input_generator"
            )
        generator = torch.Generator(device=device).manual_seed(seed)
        return self._input_generator(dtype=dtype, device=device, generator=generator, **shape)

    def __repr__(self) -> str:
        return f"<opir op {self.name}{self.schema}>"

    def drop(self) -> None:
        """Unregister the op completely (tests only)."""
        _registry.remove(self.name)
        self._torch.library._destroy()


def _refuse_backward(out: Any, message: str) -> Any:
    """``out`` with a grad_fn whose backward raises ``message``."""
    if type(out) is _Tensor:
        if not out.requires_grad:
            out.requires_grad_()
        return _DelayedError(message, 1)(out)
    outs = [t.requires_grad_() if not t.requires_grad else t for t in out]
    return tuple(_DelayedError(message, len(outs))(*outs))


# ---------------------------------------------------------------- registration
@overload
def register_op(fn: Callable) -> Op: ...
@overload
def register_op(
    *,
    name: str | None = None,
    activations: Sequence[str] | None = None,
    allow_inplace: bool = False,
) -> Callable[[Callable], Op]: ...


def register_op(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    activations: Sequence[str] | None = None,
    allow_inplace: bool = False,
) -> Op | Callable[[Callable], Op]:
    """Define an op from its native function; usable bare or with options.

    Parameters whose name starts with ``x`` are the activations unless
    ``activations`` says otherwise. ``allow_inplace`` adds
    ``op.maybe_inplace`` whose activations are donated to in-place impls.

    Example::

        @opir.register_op(allow_inplace=True)
        def add_norm(x: Tensor, x_residual: Tensor) -> tuple[Tensor, Tensor]:
            s = x + x_residual
            return s / s.norm(), s
    """

    def decorator(f: Callable) -> Op:
        op_name = getattr(f, "__name__", "") if name is None else name
        return _register(f, op_name, activations, allow_inplace)

    return decorator if fn is None else decorator(fn)


def _register(
    fn: Callable, name: str, activations: Sequence[str] | None, allow_inplace: bool
) -> Op:
    """Registration as one-purpose steps; nothing is registered until all checks pass."""
    # 1. validate: the name, then the whole signature
    _signature.check_name("op", name)
    if name in _registry.ops or _torch_library.is_defined(name):
        raise RegistrationError(f"op '{name}' is already registered (torch.ops.opir.{name})")
    sig = _signature.analyze(fn, name, activations, allow_inplace)
    # 2. generate the eager fast paths (may still fail; nothing registered yet)
    tensors, optional = sig.tensor_names, sig.optional_tensor_names
    op_class = specialize(Op, name, make_call(name, sig.signature, tensors, optional))
    inplace_class = None
    if allow_inplace:
        call = make_call(f"{name}_maybe_inplace", sig.signature, tensors, optional)
        inplace_class = specialize(MaybeInplace, name, call)
    # 3. build the Python objects
    op = op_class(fn, name, sig)
    if inplace_class is not None:
        op.maybe_inplace = inplace_class(op)
    # 4. define the torch op (rolled back on failure)
    hooks = _torch_library.TorchHooks(
        kernel=op._kernel,
        fake=op._fake,
        refuse_backward=op._refuse_backward,
        inplace_kernel=op.maybe_inplace._kernel if op.maybe_inplace else None,
        refuse_grad_donation=op._refuse_grad_donation,
    )
    op._torch = _torch_library.define(name, sig.schema, sig.inplace_schema, hooks)
    op.torch_op = op._torch.default
    if op.maybe_inplace is not None:
        op.maybe_inplace.torch_op = op._torch.maybe_inplace
    # 5. build its priority, then publish it
    op.refresh_priority()
    _registry.add(op)
    return op
