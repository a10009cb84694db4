"""Hostile-user tests of donation when arguments share memory in ways storage
identity does not show: two storages over one memory, and weights that are
views of a donated activation. Each "Actual" names what happened before the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import opir
from opir.core.impl import may_share_memory


def _add_norm(
    x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + x_residual
    return s * weight, s


def _add_norm_list(
    x: torch.Tensor, x_residual: torch.Tensor, weights: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_norm(x, x_residual, weights[0])


def _rowwise(
    x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes row by row, as a GPU kernel's programs do: a weight that is a view
    of an earlier row is already overwritten when a later row reads it."""
    for r in range(x.shape[0]):
        x_residual[r] += x[r]
        x[r] = x_residual[r] * weight
    return x, x_residual


@pytest.fixture
def rowwise_op(make_op):
    op = make_op(_add_norm, allow_inplace=True)
    op.register_impl("rows", inplace=True)(_rowwise)
    op.set_default(["rows"])
    return op


def _twin_views(shape=(3, 4)):
    """Two tensors over one memory through two different storages."""
    array = np.arange(float(np.prod(shape)), dtype=np.float32).reshape(shape)
    a, b = torch.from_numpy(array), torch.from_numpy(array)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert not torch._C._overlaps(a, b)  # what storage identity concludes
    return a, b


def test_may_share_memory_decides_by_address():
    a, b = _twin_views()
    assert may_share_memory(a, b)
    buf = bytearray(range(16))
    c, d = torch.frombuffer(buf, dtype=torch.uint8), torch.frombuffer(buf, dtype=torch.uint8)
    assert may_share_memory(c[4:], d[:8]) and not may_share_memory(c[8:], d[:8])
    base = torch.zeros(4, 8)
    assert not may_share_memory(base[:2], base[2:])
    # column blocks of the same rows (q, k, v views of one qkv buffer) do not meet
    assert not may_share_memory(base[:, :4], base[:, 4:])
    assert not may_share_memory(base[:, :4].unflatten(1, (2, 2)), base[:, 4:6])
    assert may_share_memory(base[:, :5], base[:, 4:])  # one shared column
    assert may_share_memory(base[:, :4], base.view(8, 4)[:, :2])  # other row stride
    assert may_share_memory(base[:, ::2], base[:, 1::2])  # interleaved: conservative
    assert not may_share_memory(torch.zeros(0), base)


def test_donating_one_memory_through_two_storages_matches_the_functional_op(rowwise_op):
    """Expected: the functional op's values. Actual: the storages differed, the
    overlap went unseen and the kernel wrote in place (off by ~10)."""
    a, b = _twin_views()
    w = torch.randn(4)
    ref = rowwise_op(a.clone(), a.clone(), w)
    out = rowwise_op.maybe_inplace(a, b, w)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("of", ["x", "x_residual"])
def test_a_weight_that_is_a_view_of_a_donated_activation_is_read_intact(rowwise_op, of):
    """Expected: the functional op's values. Actual: rows after the first read a
    weight the kernel had already overwritten."""
    x, r = torch.randn(3, 4), torch.randn(3, 4)
    ref = rowwise_op(x.clone(), r.clone(), (x if of == "x" else r)[0].clone())
    x2, r2 = x.clone(), r.clone()
    out = rowwise_op.maybe_inplace(x2, r2, (x2 if of == "x" else r2)[0])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_weight_over_a_second_storage_is_read_intact(rowwise_op):
    a, b = _twin_views()
    r = torch.randn(3, 4)
    ref = rowwise_op(a.clone(), r.clone(), a[0].clone())
    out = rowwise_op.maybe_inplace(a, r, b[0])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_list_element_viewing_a_donated_activation_is_read_intact(make_op):
    op = make_op(_add_norm_list, allow_inplace=True)

    @op.register_impl("rows", inplace=True)
    def rows(
        x: torch.Tensor, x_residual: torch.Tensor, weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _rowwise(x, x_residual, weights[0])

    op.set_default(["rows"])
    x, r = torch.randn(3, 4), torch.randn(3, 4)
    ref = op(x.clone(), r.clone(), [x[0].clone()])
    x2 = x.clone()
    torch.testing.assert_close(op.maybe_inplace(x2, r.clone(), (x2[0],)), ref, rtol=0, atol=0)


def test_unrelated_arguments_are_still_written_in_place(rowwise_op):
    x, r, w = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4)
    out, res = rowwise_op.maybe_inplace(x, r, w)
    assert out.data_ptr() == x.data_ptr() and res.data_ptr() == r.data_ptr()


@pytest.mark.parametrize("weight_of", [None, "x", "residual"])
def test_cpu_kernel_with_two_storages_over_one_memory(weight_of):
    """The cpu kernel decides overlap itself (aliasing_safe): by address too."""
    op = opir.ops.fused_add_rms_norm
    a, b = _twin_views((3, 8))
    r = torch.randn(3, 8)
    if weight_of is None:  # x and residual: one memory, two storages
        args, ref_args = (a, b), (a.clone(), a.clone())
        w = torch.randn(8)
    else:  # the weight is x's (or the residual's) first row, through another storage
        x, res = (a, r) if weight_of == "x" else (r, a)
        args, ref_args = (x, res), (x.clone(), res.clone())
        w = b[0]
    with op.set_priority(["native"]):
        ref = op(*ref_args, w.clone(), 1e-6)
    with op.set_priority(["cpu"]):
        assert op.dispatch(*args, w, 1e-6).provider == "cpu"
        out = op.maybe_inplace(*args, w, 1e-6)
    torch.testing.assert_close(out, ref)
