"""Ops: one native definition, many impls, and the eager hot path.

``register_op`` turns a plain, type-annotated PyTorch function into an
:class:`Op`. The function is the op's specification, its fallback (provider
``native``) and its default fake implementation. The op is also defined as
``torch.ops.opir.<name>`` (functional schema, ``CompositeExplicitAutograd``) so
that tracers see one opaque node.

Calling ``op(*args)`` picks the first impl in the op's priority chain whose
predicate accepts the arguments. In plain eager mode that happens right here
in Python, at a cost of a few hundred nanoseconds; whenever something could be
watching (Dynamo, export, make_fx, FakeTensor, functionalization, any dispatch
mode, a functorch transform, a tensor subclass, or autograd) the call goes
through the torch op instead, whose kernel runs the very same selection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import torch
from torch.library import Library, infer_schema

from opir.core import scope as _scope
from opir.core.chain import Chain, build_chain, validate_providers
from opir.core.chain import _epoch as _chain_epoch
from opir.core.errors import DispatchError, RegistrationError
from opir.core.hotpath import make_call, specialize
from opir.core.impl import Impl
from opir.core.tolerances import Tolerance, default_tolerance

NAMESPACE = "opir"
RESERVED_PROVIDERS = frozenset({"native"})
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")

registry: dict[str, Op] = {}
"""Every registered op by name, in registration order."""

# Bound once: the hot path reads these as globals.
_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_dynamo_compiling = torch.compiler.is_dynamo_compiling
_dispatch_mode_depth = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistrationError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and '_', "
            "not starting with a digit (regex ^[a-z_][a-z0-9_]*$)"
        )
    return name


def _infer_schema(fn: Callable, what: str, mutates: Sequence[str] = ()) -> str:
    try:
        return infer_schema(fn, mutates_args=tuple(mutates))
    except Exception as e:  # torch raises ValueError/TypeError/RuntimeError here
        raise RegistrationError(
            f"cannot infer a torch schema for {what}: {e}. Annotate every parameter and "
            "the return type with torch types (Tensor, Tensor | None, float, int, ...)."
        ) from e


class _Overload:
    """A callable overload of an op.

    ``Op`` itself is the default (functional) overload; ``op.maybe_inplace``
    is the donating one. They differ only in which chain entries they walk and
    which torch op they fall back to. The eager fast path (``__call__``) is
    generated per op; this class holds everything that is not on it.
    """

    op: Op
    torch_op: torch._ops.OpOverload
    _entries: tuple[tuple[Callable[..., bool] | None, Callable[..., Any]], ...]
    _n_params: int
    _donating: bool

    # __call__ is generated per op by opir.core.hotpath, installed at the end of Op.__init__.

    def _call_slow(self, args: tuple) -> Any:
        scope = _scope_get()
        eager_ok = (
            scope is not None
            and not _dynamo_compiling()
            and not _dispatch_mode_depth()
            and not _functorch_active()
            and not self.op._needs_torch_op(args)
        )
        if not eager_ok:
            return self.torch_op(*args)
        chain = scope.chains.get(self.op, self.op._chain)
        impl = self.op._select(chain, args, scope, path="eager", overload=self._overload_name)
        return self._fn_of(chain, impl)(*args)

    @property
    def _overload_name(self) -> str:
        return "maybe_inplace" if self._donating else "default"

    def _fn_of(self, chain: Chain, impl: Impl) -> Callable[..., Any]:
        entries = chain.donating if self._donating else chain.functional
        return entries[chain.impls.index(impl)][1]

    def _kernel(self, *args: Any, **kwargs: Any) -> Any:
        """The torch op's kernel: same selection as the eager path."""
        if kwargs or len(args) != self._n_params:
            args = self.op._complete_args(args, kwargs)
        chain = self.op.chain()
        impl = self.op._select(
            chain, args, _scope_get(), path="torch_op", overload=self._overload_name
        )
        return self._fn_of(chain, impl)(*args)


class MaybeInplace(_Overload):
    """``op.maybe_inplace(...)``: activations are donated to in-place impls.

    After the call the donated inputs may hold anything; use the outputs.
    Under torch.compile a use of a donated input after the call is an error.
    """

    _donating = True

    def __init__(self, op: Op, torch_op: torch._ops.OpOverload) -> None:
        self.op = op
        self.torch_op = torch_op
        self._n_params = op._n_params
        self._entries = ()

    def __repr__(self) -> str:
        return f"<opir op {self.op.name}.maybe_inplace>"


class Op(_Overload):
    """An opir operator. Create with :func:`register_op`; call like a function."""

    _donating = False

    def __init__(
        self,
        fn: Callable,
        name: str,
        activations: Sequence[str] | None,
        allow_inplace: bool,
    ) -> None:
        # --- validate everything before registering anything --------------
        _check_name("op", name)
        if name in registry or hasattr(getattr(torch.ops, NAMESPACE), name):
            raise RegistrationError(f"op '{name}' is already registered (torch.ops.opir.{name})")
        if not callable(fn):
            raise RegistrationError(f"register_op needs a function, got {fn!r}")
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        bad = [p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if bad:
            raise RegistrationError(
                f"op '{name}': parameters {bad} are keyword-only or variadic; opir ops take "
                "plain positional-or-keyword parameters so every impl can be called "
                "positionally (move them before any '*' and drop *args/**kwargs)"
            )
        schema = _infer_schema(fn, f"op '{name}'")
        kinds = [_tensor_kind(p.annotation, fn) for p in params]
        tensor_positions = tuple(i for i, k in enumerate(kinds) if k)
        names = [p.name for p in params]
        if activations is None:
            activations = [n for n in names if n.startswith("x")]
        unknown = [a for a in activations if a not in names]
        if unknown:
            raise RegistrationError(
                f"op '{name}': activations {unknown} are not parameters; parameters are {names}"
            )
        activation_positions = tuple(names.index(a) for a in activations)
        not_tensor = [names[i] for i in activation_positions if i not in tensor_positions]
        if not_tensor:
            raise RegistrationError(f"op '{name}': activations {not_tensor} must be Tensors")
        inplace_schema = None
        if allow_inplace:
            if not activation_positions:
                raise RegistrationError(
                    f"op '{name}': allow_inplace=True needs at least one activation to donate "
                    "(name it x... or pass activations=[...])"
                )
            inplace_schema = _infer_schema(fn, f"op '{name}'", mutates=activations)

        # --- register with torch; roll back on any failure -----------------
        self.op = self  # the shared _Overload code reaches the op through .op
        self.name = name
        self.native = fn
        self.schema = schema
        self.signature = signature
        self.activations = tuple(activations)
        self.activation_positions = activation_positions
        self.allow_inplace = allow_inplace
        self._tensor_positions = tensor_positions
        self._n_params = len(params)
        self._impls: dict[str, Impl] = {"native": Impl(name, "native", fn)}
        self._fake_fn: Callable = fn
        self._user_priority: tuple[str, ...] = ()
        self._tolerances: dict[torch.dtype, Tolerance] = {}
        self._input_generator: Callable[..., tuple] | None = None
        self.maybe_inplace: MaybeInplace | None = None
        self._lib = Library(NAMESPACE, "FRAGMENT")
        try:
            self._define(schema, inplace_schema)
        except Exception:
            self._lib._destroy()
            raise
        self._rebuild()
        registry[name] = self
        self.__doc__ = fn.__doc__
        # Swap in the per-op fast path (a subclass that only adds __call__).
        tensor_names = [names[i] for i in tensor_positions]
        optional = [names[i] for i in tensor_positions if kinds[i] == "optional"]
        self.__class__ = specialize(Op, name, make_call(name, signature, tensor_names, optional))
        if self.maybe_inplace is not None:
            call = make_call(f"{name}_maybe_inplace", signature, tensor_names, optional)
            self.maybe_inplace.__class__ = specialize(MaybeInplace, name, call)

    def _define(self, schema: str, inplace_schema: str | None) -> None:
        qualname = f"{NAMESPACE}::{self.name}"
        self._lib.define(self.name + schema)
        self._lib.impl(self.name, self._kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, self._fake, lib=self._lib)
        torch.library.register_autograd(
            qualname, self._no_backward, setup_context=_no_setup_context, lib=self._lib
        )
        self.torch_op = getattr(getattr(torch.ops, NAMESPACE), self.name).default
        if inplace_schema is not None:
            self._lib.define(f"{self.name}.maybe_inplace{inplace_schema}")
            overload_name = f"{self.name}.maybe_inplace"
            donating_torch_op = getattr(getattr(torch.ops, NAMESPACE), self.name).maybe_inplace
            self.maybe_inplace = MaybeInplace(self, donating_torch_op)
            self._lib.impl(overload_name, self.maybe_inplace._kernel, "CompositeExplicitAutograd")
            self._lib.impl(overload_name, self._no_grad_donation, "Autograd")
            torch.library.register_fake(f"{qualname}.maybe_inplace", self._fake, lib=self._lib)

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
        """
        _check_name("provider", provider)
        if provider in RESERVED_PROVIDERS:
            raise RegistrationError(
                f"provider name '{provider}' is reserved for the op's own function"
            )
        if provider in self._impls:
            raise RegistrationError(f"op '{self.name}' already has a '{provider}' impl")
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
            self._check_predicate(provider, supports_args)

        def decorator(fn: Callable) -> Callable:
            self._check_same_schema(fn, f"impl '{provider}' of op '{self.name}'")
            if provider in self._impls:
                raise RegistrationError(f"op '{self.name}' already has a '{provider}' impl")
            self._impls[provider] = Impl(
                self.name, provider, fn, supported, supports_args, inplace, reason
            )
            self._rebuild()
            return fn

        return decorator

    def register_fake(self, fn: Callable) -> Callable:
        """Replace the fake (meta) implementation; default is the native function."""
        self._check_same_schema(fn, f"fake of op '{self.name}'")
        self._fake_fn = fn
        return fn

    def _check_same_schema(self, fn: Callable, what: str) -> None:
        schema = _infer_schema(fn, what)
        if schema != self.schema:
            raise RegistrationError(
                f"{what} has schema {schema} but the op's is {self.schema}; "
                "parameter names, types, defaults and return type must match exactly"
            )

    def _check_predicate(self, provider: str, pred: Callable) -> None:
        if not callable(pred):
            raise RegistrationError(f"supports_args of '{provider}' must be callable")
        want = [(p.name, p.default) for p in self.signature.parameters.values()]
        got_params = list(inspect.signature(pred).parameters.values())
        got = [(p.name, p.default) for p in got_params]
        kinds_ok = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in got_params)
        if got != want or not kinds_ok:
            raise RegistrationError(
                f"supports_args of provider '{provider}' for op '{self.name}' must take the "
                f"op's parameters with the same names and defaults {self._param_list()}, "
                f"got {_fmt_params(got)}"
            )

    def _param_list(self) -> str:
        return _fmt_params([(p.name, p.default) for p in self.signature.parameters.values()])

    def withdraw_impl(self, provider: str, reason: str) -> None:
        """Mark ``provider``'s impl unsupported from now on (e.g. its build failed).

        Priorities are rebuilt, so later calls skip it as if it had been
        registered with ``supported=False, reason=reason``.
        """
        impl = self._impls[provider]
        self._impls[provider] = dataclasses.replace(impl, supported=False, reason=reason)
        self._rebuild()

    def explicitly_requested(self, provider: str) -> bool:
        """True if the user listed ``provider`` for this op (process default or scope),
        as opposed to reaching it through the platform defaults."""
        return provider in self.chain().user

    def _unregister_impl(self, provider: str) -> None:
        """Remove an impl (tests and benchmarks use transient providers)."""
        if provider == "native":
            raise RegistrationError("the native impl cannot be removed")
        del self._impls[provider]
        self._user_priority = tuple(p for p in self._user_priority if p != provider)
        self._rebuild()

    # --------------------------------------------------------------- priority
    def set_default(self, providers: Sequence[str]) -> None:
        """Set this op's process-wide priority (platform defaults follow it)."""
        self._user_priority = validate_providers(self, providers)
        self._rebuild()

    @contextlib.contextmanager
    def set_priority(self, providers: Sequence[str]) -> Iterator[None]:
        """Scoped priority for this op: this thread / asyncio task only, nestable."""
        chain = build_chain(self, validate_providers(self, providers))
        with _scope.overriding({self: chain}):
            yield

    def get_priority(self) -> list[str]:
        """The effective, filtered priority in the current scope."""
        return self.chain().providers

    def chain(self) -> Chain:
        """The filtered chain in effect in the current scope."""
        scope = _scope_get()
        return self._chain if scope is None else scope.chains.get(self, self._chain)

    def compile_chain(self) -> Chain:
        """The chain the compile-time lowering uses: the user's entries in the
        current scope, then the platform defaults measured for compiled graphs."""
        return build_chain(self, self.chain().user, mode="compile")

    def _rebuild(self) -> None:
        _chain_epoch[0] += 1
        chain = build_chain(self, self._user_priority)
        self._chain = chain
        self._entries = chain.functional
        if self.maybe_inplace is not None:
            self.maybe_inplace._entries = chain.donating

    # --------------------------------------------------------------- dispatch
    def dispatch(self, *args: Any, chain: Chain | None = None, **kwargs: Any) -> Impl:
        """The impl a call with these (real or fake) arguments would run.

        ``chain`` overrides the chain in effect (the lowering pass passes
        :meth:`compile_chain`).
        """
        args = self._complete_args(args, kwargs)
        return self._select(
            chain or self.chain(), args, _scope_get(), path="dispatch", overload="default"
        )

    def _select(self, chain: Chain, args: tuple, scope: Any, path: str, overload: str) -> Impl:
        if scope is None or (scope.tracer is None and not scope.strict):
            for impl in chain.impls:
                if impl.supports_args is None or impl.supports_args(*args):
                    return impl
            raise AssertionError(f"chain of {self.name} ends with a conditional impl")
        rejected = list(chain.dropped) if chain.dropped else []
        chosen = None
        for impl in chain.impls:
            if impl.supports_args is None or impl.supports_args(*args):
                chosen = impl
                break
            rejected.append((impl.provider, "supports_args returned False"))
        assert chosen is not None
        if scope.tracer is not None and path != "dispatch":
            scope.tracer._record(self.name, overload, chosen.provider, path, rejected, args)
        if scope.strict and chosen.provider != chain.preferred:
            why = "; ".join(f"{p}: {r}" for p, r in rejected) or "not in the filtered list"
            raise DispatchError(
                f"strict mode: op '{self.name}' would fall back from preferred provider "
                f"'{chain.preferred}' to '{chosen.provider}' ({why}). Fix the inputs, change "
                "the priority, or leave strict mode."
            )
        return chosen

    def _needs_torch_op(self, args: tuple) -> bool:
        """True if any tensor arg is a subclass or needs autograd."""
        grad = _grad_enabled()
        for i in self._tensor_positions:
            a = args[i]
            if a is None:
                continue
            if type(a) is not _Tensor and type(a) is not _Parameter:
                return True
            if grad and a.requires_grad:
                return True
        return False

    def _complete_args(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple:
        """All parameters positionally, defaults filled: what impls always receive."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(
                f"opir op '{self.name}': {e}. Signature: {self.name}{self._param_list()}"
            ) from None
        bound.apply_defaults()
        return bound.args

    # ----------------------------------------------------------- torch hooks
    def _fake(self, *args: Any) -> Any:
        return self._fake_fn(*args)

    def _no_backward(self, ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"opir op '{self.name}' is an inference op and has no backward. Run it under "
            "torch.inference_mode() / torch.no_grad(), or differentiate the spec instead: "
            f"opir.ops.{self.name}.native(...)"
        )

    def _no_grad_donation(self, *args: Any) -> Any:
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
        """Arguments for one call, made by the op's input generator."""
        if self._input_generator is None:
            raise NotImplementedError(
                f"op '{self.name}' has no input generator; add one with "
                f"@{self.name}.register_input_generator"
            )
        generator = torch.Generator(device=device).manual_seed(seed)
        return self._input_generator(dtype=dtype, device=device, generator=generator, **shape)

    def __repr__(self) -> str:
        return f"<opir op {self.name}{self.schema}>"

    def _drop(self) -> None:
        """Unregister the op completely (tests only)."""
        registry.pop(self.name, None)
        self._lib._destroy()


def _no_setup_context(ctx: Any, inputs: Any, output: Any) -> None:
    return None


def _fmt_params(params: list[tuple[str, Any]]) -> str:
    empty = inspect.Parameter.empty
    return "(" + ", ".join(n if d is empty else f"{n}={d!r}" for n, d in params) + ")"


def _tensor_kind(annotation: Any, fn: Callable) -> str | None:
    """'tensor', 'optional' (Tensor | None) or None, for one parameter's annotation."""
    if isinstance(annotation, str):  # postponed annotations: resolve like torch does
        annotation = eval(annotation, fn.__globals__)
    if annotation is torch.Tensor:
        return "tensor"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if torch.Tensor in args:
            return "optional" if type(None) in args else "tensor"
    return None


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
    """

    def decorator(f: Callable) -> Op:
        return Op(
            f, getattr(f, "__name__", "") if name is None else name, activations, allow_inplace
        )

    return decorator if fn is None else decorator(fn)
