"""Op[P, R] is generic for type checkers only: the call stays the generated fast path."""

import torch

import opir
from opir.core.overloads import MaybeInplace, Overload


def test_the_typed_call_exists_for_checkers_only() -> None:
    # The checker-only __call__ must not exist at run time, or it could shadow the
    # generated fast path of a subclass that forgot to install one.
    for cls in (Overload, MaybeInplace, opir.Op, opir.InplaceOp):
        assert "__call__" not in vars(cls)
    op = opir.ops.rms_norm
    assert "__call__" in vars(type(op)) and type(op).__mro__[1] is opir.Op


def test_ops_with_maybe_inplace_are_inplace_ops() -> None:
    assert isinstance(opir.ops.fused_add_rms_norm, opir.InplaceOp)
    assert opir.ops.fused_add_rms_norm.maybe_inplace is not None
    assert not isinstance(opir.ops.rms_norm, opir.InplaceOp)
    assert opir.ops.rms_norm.maybe_inplace is None


def test_subscripted_op_types_are_usable_as_annotations_at_run_time() -> None:
    alias = opir.Op[[torch.Tensor, float], torch.Tensor]
    assert alias.__origin__ is opir.Op


def test_register_op_with_options_returns_the_matching_class(make_op) -> None:
    def twice(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x_other * 2

    op = make_op(twice, allow_inplace=True)
    assert isinstance(op, opir.InplaceOp)
    out, other = op.maybe_inplace(torch.ones(2), torch.ones(2))
    assert torch.equal(out, torch.full((2,), 2.0)) and torch.equal(other, out)
