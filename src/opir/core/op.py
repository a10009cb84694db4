"""Ops: one native definition, many impls, and the eager call path.

``register_op`` turns a plain, type-annotated PyTorch function into an
:class:`Op`. The function is the op's specification, its fallback (provider
``native``) and its default fake implementation. The op is also defined as
``torch.ops.opir.<name>`` (functional schema, ``CompositeExplicitAutograd``) so
that tracers see one opaque node.

Registration lives in :mod:`opir.core.register`; the call machinery shared
with ``maybe_inplace`` in :mod:`opir.core.overloads`.

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
from typing import Any

import torch

from opir.core import registry as _registry
from opir.core import scope as _scope
from opir.core import signature as _signature
from opir.core.errors import RegistrationError
from opir.core.impl import Impl
from opir.core.numerics import NumericsMixin
from opir.core.overloads import MaybeInplace, Overload
from opir.core.priority import Priority, build_priority, validate_providers
from opir.core.selection import Selection, explain
from opir.core.tolerances import Tolerance

RESERVED_PROVIDERS = frozenset({"native"})

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get


class Op(Overload, NumericsMixin):
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
        eager: Callable | None = None,
        aliasing_safe: bool = False,
    ) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` as ``provider``'s kernel for this op.

        ``supported``: static platform/library availability (``reason`` says
        why not). ``supports_args``: per-call argument check with exactly the
        op's parameter names and defaults, returning a plain bool, also for
        fake tensors. Enable or disable providers through priority, never
        inside these predicates. ``inplace=True`` (only for ``allow_inplace``
        ops) lets the kernel write into the activations and return them.
        ``fn`` must be traceable (the torch op's kernel and the compile-time
        lowering run it); ``eager``, with the same parameters, is what the
        eager fast path calls instead, e.g. a pybind entry point that skips
        the dispatcher. Impls never need to ask whether they are being traced.
        ``aliasing_safe=True`` declares that an in-place kernel is itself correct
        when donated activations overlap (each other, or themselves); otherwise
        opir checks every ``maybe_inplace`` call and serves overlapping ones on
        clones. Float parameters may arrive as ``int`` on the eager path (as
        Python's typing allows; the torch op converts them): accept both.
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
            what = f"supports_args of provider '{provider}' for op '{self.name}'"
            _signature.check_same_parameters(what, self.sig, supports_args)
        if eager is not None:
            what = f"the eager function of provider '{provider}' for op '{self.name}'"
            _signature.check_same_parameters(what, self.sig, eager)

        def decorator(fn: Callable) -> Callable:
            what = f"impl '{provider}' of op '{self.name}'"
            _signature.check_same_schema(fn, self.schema, what)
            self._check_new_provider(provider)
            impl = Impl(
                self.name,
                provider,
                fn,
                supported,
                supports_args,
                inplace,
                reason,
                eager,
                aliasing_safe,
            )
            self._impls[provider] = impl
            self.refresh_priority()
            return fn

        return decorator

    def _check_new_provider(self, provider: str) -> None:
        if provider in self._impls:
            raise RegistrationError(f"op '{self.name}' already has a '{provider}' impl")

    def register_fake(self, fn: Callable) -> Callable:
        """Replace the fake (meta) implementation; default is the native function.

        Example::

            @my_op.register_fake
            def _(x: torch.Tensor, alpha: float) -> torch.Tensor:
                return torch.empty_like(x)
        """
        _signature.check_same_schema(fn, self.schema, f"fake of op '{self.name}'")
        self._fake_fn = fn
        return fn

    def withdraw_impl(self, provider: str, reason: str) -> None:
        """Mark ``provider``'s impl unsupported from now on (e.g. its build failed).

        Priorities are rebuilt, so later calls skip it as if it had been
        registered with ``supported=False, reason=reason``.

        Example: ``opir.ops.rms_norm.withdraw_impl("cpu", "C++ build failed: ...")``
        """
        impl = self._impls[provider]
        self._impls[provider] = dataclasses.replace(impl, supported=False, reason=reason)
        self.refresh_priority()

    def explicitly_requested(self, provider: str) -> bool:
        """True if the user listed ``provider`` for this op (process default or scope),
        as opposed to reaching it through the platform defaults.

        Example: ``opir.ops.rms_norm.explicitly_requested("cpu")`` -> ``False`` by default
        """
        return provider in self.current_priority().user

    def unregister_impl(self, provider: str) -> None:
        """Remove an impl (tests and benchmarks use transient providers).

        Example: ``my_op.unregister_impl("experimental")``
        """
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
        """The effective, filtered priority in the current scope, as provider names.

        Example: ``opir.ops.rms_norm.get_priority()`` -> ``['cpu', 'native']``
        """
        return self.current_priority().providers

    def current_priority(self) -> Priority:
        """The :class:`Priority` in effect in the current scope.

        Example: ``opir.ops.rms_norm.current_priority().dropped`` lists providers
        removed as unsupported here, with the reason.
        """
        scope = _scope_get()
        if scope is not None and self in scope.priorities:
            return scope.priorities[self]
        return self._priority

    def compile_priority(self, fixed: Sequence[str] | None = None) -> Priority:
        """The priority lowering uses: ``fixed`` (or the user's entries in effect), then
        the platform defaults measured for compiled graphs.

        Example: ``opir.ops.rms_norm.compile_priority().providers`` -> ``['native']`` on CPU
        """
        user = self.current_priority().user if fixed is None else fixed
        return build_priority(self, user, mode="compile")

    def refresh_priority(self) -> None:
        """Rebuild the process-wide priority (after impls or platform defaults change).

        Registration and ``set_platform_defaults`` call it; call it yourself only
        after changing what a priority is built from by other means.
        """
        _registry.bump_epoch()
        priority = build_priority(self, self._user_priority)
        self._priority = priority
        self._entries = priority.functional
        if self.maybe_inplace is not None:
            self.maybe_inplace._entries = priority.donating
        _scope.refresh(
            self, lambda old: build_priority(self, [p for p in old.user if p in self._impls])
        )

    # --------------------------------------------------------------- dispatch
    def complete_args(self, args: tuple, kwargs: Mapping[str, Any] | None = None) -> tuple:
        """All parameters positionally, defaults filled: what impls always receive.

        Example: ``rms_norm.complete_args((x, w), {"epsilon": 1e-6})`` ->
        ``(x, w, 1e-6, None, 0.0)``
        """
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
        providers before it were passed over.

        Example::

            sel = rms_norm.select(rms_norm.complete_args((x.t(), w, 1e-6)))
            sel.impl.provider, sel.rejected  # 'native', (('cpu', 'supports_args returned False'),)
        """
        return explain(priority or self.current_priority(), args)

    def dispatch(self, *args: Any, **kwargs: Any) -> Impl:
        """The impl a call with these (real or fake) arguments would run in the
        current scope. It takes exactly the op's own arguments (an op may have a
        parameter named ``priority``); to ask about another priority use
        ``op.select(op.complete_args(args), priority)``.

        Example: ``opir.ops.rms_norm.dispatch(x, w, 1e-6).provider`` -> ``'cpu'``
        """
        return self.select(self.complete_args(args, kwargs)).impl

    # ----------------------------------------------------------- torch hooks
    def _fake(self, *args: Any) -> Any:
        return self._fake_fn(*args)

    def _refuse_grad_donation(self, *args: Any) -> Any:
        if _grad_enabled() and any(isinstance(a, _Tensor) and a.requires_grad for a in args):
            raise RuntimeError(
                f"{self.name}.maybe_inplace donates its inputs and cannot be used with tensors "
                "that require grad; run under torch.inference_mode() / torch.no_grad() or call "
                "the functional op"
            )
        with torch._C._AutoDispatchBelowAutograd():
            return self.maybe_inplace.torch_op(*args)

    def __repr__(self) -> str:
        return f"<opir op {self.name}{self.schema}>"

    def drop(self) -> None:
        """Unregister the op completely (tests only); its name can be registered again.

        Example: ``my_op.drop()``
        """
        _registry.remove(self.name)
        self._torch.library._destroy()
