"""The call machinery both overloads of an op share, off the generated fast path.

An op object is its own default (functional) overload; ``op.maybe_inplace`` is
the donating one. They differ only in which priority entries they walk and
which torch op they fall back to. The fast path itself (``__call__``) is
generated per op by :mod:`opir.core.hotpath`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from opir.core import scope as _scope
from opir.core.impl import Impl
from opir.core.priority import Entry, Priority, functional_fn
from opir.core.selection import select_in_scope

if TYPE_CHECKING:
    from opir.core.op import Op

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get
_DelayedError = torch._C._functions.DelayedError


class Overload:
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
        """The eager function of ``impl`` for this overload."""
        return priority.entries(self._donating)[priority.impls.index(impl)][1]

    def _traceable(self, impl: Impl) -> Callable[..., Any]:
        """The traceable function of ``impl`` for this overload (the torch op's kernel)."""
        if self._donating:
            return impl.fn
        return functional_fn(impl, self.op.activation_positions, eager=False)

    def _call_selecting(self, args: tuple) -> Any:
        """Eager call inside a tracing or strict scope: the full selection."""
        op, scope = self.op, _scope_get()
        priority = op.current_priority()
        impl = select_in_scope(op.name, self._overload_name, priority, args, scope, "eager")
        fn = self._entries_of(priority, impl)
        if _grad_enabled() and any(isinstance(a, _Tensor) and a.requires_grad for a in args):
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
        return self._traceable(impl)(*args)


class MaybeInplace(Overload):
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


def _refuse_backward(out: Any, message: str) -> Any:
    """``out`` with a grad_fn whose backward raises ``message``."""
    if type(out) is _Tensor:
        if not out.requires_grad:
            out.requires_grad_()
        return _DelayedError(message, 1)(out)
    outs = [t.requires_grad_() if not t.requires_grad else t for t in out]
    return tuple(_DelayedError(message, len(outs))(*outs))
