"""The call machinery both overloads of an op share, off the generated fast path.

An op object is its own default (functional) overload; ``op.maybe_inplace`` is
the donating one. They differ only in which priority entries they walk and
which torch op they fall back to. The fast path itself (``__call__``) is
generated per op by :mod:`opir.core.hotpath`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import torch
import torch.autograd.forward_ad as _fwad

from opir.core import scope as _scope
from opir.core.impl import Impl, marking_donated
from opir.core.priority import Entry, Priority, functional_fn
from opir.core.protocols import OpLike
from opir.core.selection import select_in_scope

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_scope_get = _scope.current.get
_DelayedError = torch._C._functions.DelayedError
_unpack_dual = torch._VF._unpack_dual

P = ParamSpec("P")  # the native function's parameters
R = TypeVar("R")  # the native function's result


class Overload(Generic[P, R]):
    """What the default overload (the op itself) and ``maybe_inplace`` share.

    The eager fast path, ``__call__``, is generated per op and installed on a
    per-op subclass; everything off that path lives here. For type checkers an
    overload is called like its native function (``P`` -> ``R``).
    """

    op: OpLike
    torch_op: torch._ops.OpOverload
    _entries: tuple[Entry, ...]
    _donating: bool
    _overload_name: str

    def _entries_of(self, priority: Priority, impl: Impl) -> Callable[..., Any]:
        """The eager function of ``impl`` for this overload."""
        return priority.entries(self._donating)[priority.impls.index(impl)][1]

    def _traceable(self, impl: Impl) -> Callable[..., Any]:
        """The traceable function of ``impl`` for this overload (the torch op's kernel)."""
        positions = self.op.activation_positions
        if self._donating:
            return marking_donated(impl.fn, positions) if impl.inplace else impl.fn
        return functional_fn(impl, positions, eager=False)

    def _call_selecting(self, args: tuple) -> Any:
        """Eager call inside a tracing or strict scope: the full selection."""
        op, scope = self.op, _scope_get()
        priority = op.current_priority()
        impl = select_in_scope(op.name, self._overload_name, priority, args, scope, "eager")
        fn = self._entries_of(priority, impl)
        if _grad_enabled() and requiring_grad(args):
            return self._call_refusing_backward(((None, fn),), args)
        return fn(*args)

    def _call_refusing_backward(self, entries: tuple[Entry, ...], args: tuple) -> Any:
        """Inputs require grad: run the kernel eagerly, make backward raise."""
        for pred, fn in entries:
            if pred is None or pred(*args):
                return _refuse_backward(fn(*args), self.op.backward_error, args)
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

    if TYPE_CHECKING:
        # Declared for type checkers only: at run time each op's class carries its
        # generated fast path (``hotpath.specialize``), which this must not shadow.
        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...


class MaybeInplace(Overload[P, R]):
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

    def __init__(self, op: OpLike) -> None:
        self.op = op
        self._entries = ()  # set by op.refresh_priority(); torch_op once defined

    def _call_refusing_backward(self, entries: tuple[Entry, ...], args: tuple) -> Any:
        return self.torch_op(*args)  # its Autograd kernel raises the clear error

    def __repr__(self) -> str:
        return f"<opir op {self.op.name}.maybe_inplace>"


_DIFFERENTIABLE = frozenset(
    d
    for d in vars(torch).values()
    if isinstance(d, torch.dtype) and (d.is_floating_point or d.is_complex)
)


def requiring_grad(args: tuple) -> list[_Tensor]:
    """The arguments (and elements of list or tuple arguments) that require grad."""
    found = []
    for a in args:
        if isinstance(a, _Tensor):
            if a.requires_grad:
                found.append(a)
        elif isinstance(a, (list, tuple)):  # a list[Tensor] parameter may get a tuple
            found.extend(t for t in a if isinstance(t, _Tensor) and t.requires_grad)
    return found


def _tensors(args: tuple) -> list[_Tensor]:
    """The tensor arguments, list and tuple elements included."""
    found = []
    for a in args:
        if isinstance(a, _Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(t for t in a if isinstance(t, _Tensor))
    return found


def carrying_tangent(args: tuple) -> bool:
    """Whether forward-mode AD is on (``forward_ad.dual_level``, which ``torch.func.jvp``
    and ``jacfwd`` enter too) and some argument is a dual tensor of that level."""
    level = _fwad._current_level
    if level < 0:
        return False
    return any(_unpack_dual(t, level)[1] is not None for t in _tensors(args))


def forward_ad_error(name: str) -> str:
    """The error for an op reached by forward-mode AD (kernels have no tangent formula)."""
    return (
        f"opir op '{name}' is an inference op and has no forward-mode derivative either "
        "(torch.func.jvp / jacfwd / torch.autograd.forward_ad): its kernels compute no "
        f"tangents. Differentiate the spec instead: opir.ops.{name}.native(...), or call "
        "the op on plain (non-dual) tensors"
    )


def refuse_forward_ad(op: OpLike, args: tuple) -> None:
    """Raise the forward-AD error when an argument carries a tangent."""
    if carrying_tangent(args):
        raise RuntimeError(forward_ad_error(op.name))


def _refuse_backward(out: Any, message: str, args: tuple) -> Any:
    """``out`` with a grad_fn whose backward raises ``message``.

    One ``DelayedError`` node takes the floating-point outputs *and* every
    input that requires grad: its outputs alias ours (nothing is copied, no
    tensor of the caller is changed), and because the node's edges lead to
    those inputs, any backward or ``autograd.grad`` that would need a gradient
    through this op reaches it and raises — also when AOTAutograd traces a
    compiled graph's backward. Integer outputs come back untouched; a list
    stays a list.
    """
    inputs = requiring_grad(args)
    if isinstance(out, _Tensor):  # also FakeTensor and other subclasses
        if out.dtype not in _DIFFERENTIABLE:
            return out
        return _DelayedError(message, 1 + len(inputs))(out, *inputs)[0] if inputs else out
    items = list(out)
    slots = [
        i for i, t in enumerate(items) if isinstance(t, _Tensor) and t.dtype in _DIFFERENTIABLE
    ]
    if slots and inputs:
        refused = _DelayedError(message, len(slots) + len(inputs))(
            *(items[i] for i in slots), *inputs
        )
        for i, t in zip(slots, refused, strict=False):
            items[i] = t
    return items if isinstance(out, list) else tuple(items)


def refuse_backward_kernel(overload: Overload) -> Callable[..., Any]:
    """The Autograd-key kernel of an op's functional torch op.

    It runs the op below autograd and, when an input requires grad, gives the
    outputs a grad_fn that raises the op's "inference op" error. Unlike
    ``torch.library.register_autograd`` this also works under functorch
    transforms: ``vmap`` works, and a gradient transform (``torch.func.grad``,
    ``jacrev``) gets opir's message at once, in the forward, since a
    transform allows no grad_fn to be attached afterwards. Forward-mode AD
    (dual tensors, ``jvp``, ``jacfwd``) reaches this kernel too and is refused
    before anything runs: the kernels below compute no tangents, and a missing
    or zero tangent would be a silently wrong derivative.
    """
    op = overload.op
    below_autograd = torch._C._AutoDispatchBelowAutograd
    any_requires_grad = torch._C._any_requires_grad
    functorch_active = torch._C._are_functorch_transforms_active

    def kernel(*args: Any) -> Any:
        refuse_forward_ad(op, args)
        with below_autograd():
            out = overload.torch_op(*args)
        if _grad_enabled() and any_requires_grad(*args):
            if functorch_active():  # no requires_grad_ inside a transform: refuse now
                raise RuntimeError(op.backward_error)
            return _refuse_backward(out, op.backward_error, args)
        return out

    return kernel
