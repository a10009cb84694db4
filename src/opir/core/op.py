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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from opir.core import registry as _registry
from opir.core import scope as _scope
from opir.core import signature as _signature
from opir.core.impl import Impl
from opir.core.impl_table import ImplTable
from opir.core.numerics import NumericsMixin
from opir.core.overloads import MaybeInplace, Overload, P, R, refuse_forward_ad, requiring_grad
from opir.core.priority import Priority, build_priority, validate_providers
from opir.core.selection import Selection, explain
from opir.core.tolerances import Tolerance

if TYPE_CHECKING:
    from opir.core.torch_library import TorchOp

_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get


class Op(ImplTable, Overload[P, R], NumericsMixin):
    """An opir operator. Create with :func:`register_op`; call like a function.

    Example::

        @opir.register_op
        def scale(x: torch.Tensor, alpha: float) -> torch.Tensor:
            return x * alpha

        @scale.register_impl("mine", supports_args=lambda x, alpha: x.is_contiguous())
        def scale_mine(x: torch.Tensor, alpha: float) -> torch.Tensor: ...

        scale(torch.ones(3), 2.0)

    ``Op[P, R]`` is generic over the native function's parameters and result,
    so type checkers check calls like calls of the native function.
    """

    _donating = False
    _overload_name = "default"
    _torch: TorchOp  # torch.ops.opir.<name>, set by register_op

    def __init__(self, fn: Callable[P, R], name: str, sig: _signature.OpSignature) -> None:
        self.name = name
        self.native: Callable[P, R] = fn
        self.sig = sig
        self.schema = sig.schema
        self.signature = sig.signature
        self.activations = sig.activations
        self.activation_positions = sig.activation_positions
        self.allow_inplace = sig.inplace_schema is not None
        self._impls: dict[str, Impl] = {"native": Impl(name, "native", fn)}
        self._fake_fn: Callable = fn
        self._user_priority: tuple[str, ...] = ()
        # built by refresh_priority() before register_op returns the op
        self._priority: Priority = None  # type: ignore[assignment]
        self._entries = ()
        self._tolerances: dict[torch.dtype, Tolerance] = {}
        self._input_generator: Callable[..., tuple] | None = None
        self.maybe_inplace: MaybeInplace[P, R] | None = None
        self.backward_error = (
            f"opir op '{name}' is an inference op and has no backward. Run it under "
            "torch.inference_mode() / torch.no_grad(), or differentiate the spec instead: "
            f"opir.ops.{name}.native(...)"
        )
        self.__doc__ = fn.__doc__

    @property
    def op(self) -> Op[P, R]:  # type: ignore[override]  # read-only here: an op is itself
        """An op is its own default overload (``maybe_inplace`` is the other)."""
        return self

    # --------------------------------------------------------------- priority
    def set_default(self, providers: Sequence[str]) -> None:
        """Set this op's process-wide priority (platform defaults follow it).

        Example: ``opir.ops.rms_norm.set_default(["cpu", "native"])``
        """
        self._user_priority = validate_providers(self, providers)
        self.refresh_priority()

    def set_priority(self, providers: Sequence[str]) -> contextlib.AbstractContextManager:
        """Scoped priority for this op: this thread / asyncio task only, nestable.

        Inside a ``torch.compile`` region (``fullgraph=True`` included) the block
        pins the priority of the op calls it contains when the graph is lowered
        (see :func:`opir.core.scope.annotated`).

        Example::

            with opir.ops.rms_norm.set_priority(["native"]):
                y = opir.ops.rms_norm(x, w, 1e-6)
        """
        if _scope.compiling():
            return _scope.annotated({self.name: providers})
        return self._scoped_priority(providers)

    @contextlib.contextmanager
    def _scoped_priority(self, providers: Sequence[str]) -> Iterator[None]:
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
        refuse_forward_ad(self, args)
        if _grad_enabled() and requiring_grad(args):
            raise RuntimeError(
                f"{self.name}.maybe_inplace donates its inputs and cannot be used with tensors "
                "that require grad; run under torch.inference_mode() / torch.no_grad() or call "
                "the functional op"
            )
        with torch._C._AutoDispatchBelowAutograd():
            # only ops with maybe_inplace install this hook
            return self.maybe_inplace.torch_op(*args)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<opir op {self.name}{self.schema}>"

    def drop(self) -> None:
        """Unregister the op completely (tests only); its name can be registered again.

        Example: ``my_op.drop()``
        """
        _registry.remove(self.name)
        self._torch.library._destroy()


class InplaceOp(Op[P, R]):
    """An op registered with ``allow_inplace=True``: it always has ``maybe_inplace``.

    Example: ``opir.ops.fused_add_rms_norm.maybe_inplace(x, residual, w, 1e-6)``
    """

    maybe_inplace: MaybeInplace[P, R]
