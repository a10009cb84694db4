"""``register_op``: turning a native function into an :class:`~opir.core.op.Op`.

Registration is a sequence of one-purpose steps, and nothing is registered
anywhere until every check has passed and the fast path has been generated;
a failure while defining the torch op is rolled back, so a refused op leaves
its name free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, overload

from opir.core import registry as _registry
from opir.core import signature as _signature
from opir.core import torch_library as _torch_library
from opir.core.errors import RegistrationError
from opir.core.hotpath import make_call, specialize
from opir.core.op import InplaceOp, Op
from opir.core.overloads import MaybeInplace, P, R, refuse_backward_kernel


class _OpDecorator(Protocol):
    """``register_op(...)`` with options: a decorator typed by the function it gets."""

    def __call__(self, fn: Callable[P, R], /) -> Op[P, R]: ...


class _InplaceOpDecorator(Protocol):
    def __call__(self, fn: Callable[P, R], /) -> InplaceOp[P, R]: ...


@overload
def register_op(fn: Callable[P, R]) -> Op[P, R]: ...
@overload
def register_op(
    *,
    name: str | None = None,
    activations: Sequence[str] | None = None,
    allow_inplace: Literal[True],
) -> _InplaceOpDecorator: ...
@overload
def register_op(
    *,
    name: str | None = None,
    activations: Sequence[str] | None = None,
    allow_inplace: bool = False,
) -> _OpDecorator: ...


def register_op(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    activations: Sequence[str] | None = None,
    allow_inplace: bool = False,
) -> Op | _OpDecorator | _InplaceOpDecorator:
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
    lists = sig.tensor_list_names
    base = InplaceOp if allow_inplace else Op
    op_class = specialize(base, name, make_call(name, sig.signature, tensors, optional, lists))
    inplace_class = None
    if allow_inplace:
        call = make_call(
            f"{name}_maybe_inplace", sig.signature, tensors, optional, lists, donating=True
        )
        inplace_class = specialize(MaybeInplace, name, call)
    # 3. build the Python objects
    op = op_class(fn, name, sig)
    if inplace_class is not None:
        op.maybe_inplace = inplace_class(op)
    # 4. define the torch op (rolled back on failure)
    hooks = _torch_library.TorchHooks(
        kernel=op._kernel,
        fake=op._fake,
        autograd_kernel=refuse_backward_kernel(op),
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
