"""The cpu kernels never answer wrongly: aliasing inputs, mixed dtypes, bad arguments."""

from __future__ import annotations

import inspect

import pytest
import torch
from conformance import assert_matches_native, clone_args, run_provider

from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

EPS = 1e-6
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def _expected_fused(x, residual, weight, **kw):
    return fused_add_rms_norm.native(
        x.clone(), residual.clone(), None if weight is None else weight.clone(), EPS, **kw
    )


def _inplace(x, residual, weight):
    """maybe_inplace on exactly cpu (strict: a predicate rejection would be an error)."""
    return run_provider(fused_add_rms_norm, "cpu", (x, residual, weight, EPS), donate=True)


def _close(got, expected, dtype):
    tol = fused_add_rms_norm.tolerance(dtype)
    torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)


# --- aliasing in the in-place kernel (maybe_inplace) --------------------------------


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_residual_is_x_itself(dtype):
    x = torch.randn(5, 64).to(dtype)
    w = torch.randn(64).to(dtype)
    expected = _expected_fused(x, x, w)
    _close(_inplace(x, x, w), expected, dtype)


def test_residual_partly_overlaps_x():
    buf = torch.randn(6 * 64)
    x, residual = buf[: 4 * 64].view(4, 64), buf[64 : 5 * 64].view(4, 64)
    w = torch.randn(64)
    expected = _expected_fused(x, residual, w)
    _close(_inplace(x, residual, w), expected, F32)


@pytest.mark.parametrize("make", ["expand", "as_strided"])
def test_rows_of_x_overlap_each_other(make):
    base = torch.randn(3, 64)
    x = base[:1].expand(4, 64) if make == "expand" else base.as_strided((4, 64), (32, 1))
    residual = torch.randn(4, 64)
    w = torch.randn(64)
    expected = _expected_fused(x, residual, w)
    _close(_inplace(x, residual, w), expected, F32)


@pytest.mark.parametrize("source", ["x", "residual"])
def test_fp32_weight_is_a_view_of_an_output(source):
    x, residual = torch.randn(4, 64), torch.randn(4, 64)
    w = (x if source == "x" else residual)[2]
    expected = _expected_fused(x, residual, w)
    _close(_inplace(x, residual, w), expected, F32)


def test_interleaved_slices_of_one_buffer_are_right():
    # Extents intersect, so the check (conservatively) takes the copy path.
    buf = torch.randn(4, 128)
    x, residual = buf[:, :64], buf[:, 64:]
    expected = _expected_fused(x, residual, None)
    _close(_inplace(x, residual, None), expected, F32)


def test_separate_tensors_stay_in_place():
    x, residual = torch.randn(4, 64)[:, :48], torch.randn(4, 64)
    residual = residual[:, :48]
    out, res = _inplace(x, residual, torch.randn(48))
    assert out.data_ptr() == x.data_ptr() and res.data_ptr() == residual.data_ptr()


def test_functional_overload_with_internally_overlapping_x():
    x = torch.randn(1, 64).expand(4, 64)
    assert_matches_native(fused_add_rms_norm, "cpu", (x, torch.randn(4, 64), None, EPS))


def test_custom_op_refuses_overlapping_outputs_clearly():
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="alias or overlap"):
        torch.ops.opir_cpu.fused_add_rms_norm_(x, x, None, EPS, None)


# --- the mixed-dtype contract now runs in C++ (no silent native fallback) ----------


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype"), [(F32, BF16), (F32, F16), (BF16, F16), (F16, BF16), (BF16, F32)]
)
@pytest.mark.parametrize("weight_bias", [0.0, 1.0])
def test_weight_of_another_dtype_and_bias(x_dtype, w_dtype, weight_bias):
    x = torch.randn(7, 96).to(x_dtype)
    w = (0.1 * torch.randn(96)).to(w_dtype)
    assert_matches_native(rms_norm, "cpu", (x, w, EPS, None, weight_bias))
    residual = torch.randn(7, 96).to(x_dtype)
    assert_matches_native(fused_add_rms_norm, "cpu", (x, residual, w, EPS, 48, weight_bias))


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_weight_bias_with_same_dtype_weight_is_computed_in_fp32(dtype):
    x, w = torch.randn(3, 64).to(dtype), (0.01 * torch.randn(64)).to(dtype)
    assert_matches_native(rms_norm, "cpu", (x, w, EPS, None, 1.0))


def test_weight_bias_never_writes_the_weight():
    w = torch.randn(64)
    before = w.clone()
    run_provider(rms_norm, "cpu", (torch.randn(2, 64), w, EPS, None, 1.0))
    assert torch.equal(w, before)


@pytest.mark.parametrize(
    ("x_dtype", "g_dtype"),
    [(F32, BF16), (BF16, F32), (F16, F32), (BF16, F16), (F32, None), (BF16, None)],
)
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("w_dtype", [None, F32, BF16])
def test_gate_of_any_dtype_or_none(x_dtype, g_dtype, norm_before_gate, w_dtype):
    x = torch.randn(5, 64).to(x_dtype)
    gate = None if g_dtype is None else torch.randn(5, 64).to(g_dtype)
    w = None if w_dtype is None else torch.randn(64).to(w_dtype)
    assert_matches_native(rms_norm_gated, "cpu", (x, gate, w, EPS, 16, norm_before_gate))


# --- bad arguments: clear errors, the same type as native's --------------------------


@pytest.mark.parametrize("eps", [None, "1e-6", [1e-6]])
@pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm, rms_norm_gated], ids=str)
def test_epsilon_of_the_wrong_type_names_epsilon(op, eps):
    args = list(op.sample_inputs(dtype=F32, num_tokens=2, hidden_size=8))
    args[list(inspect.signature(op.native).parameters).index("epsilon")] = eps
    with pytest.raises(TypeError, match="epsilon must be a float"):
        run_provider(op, "cpu", tuple(args))


@pytest.mark.parametrize("group_size", [1, 4, 0, -1])
def test_group_size_is_checked_when_hidden_is_zero(group_size):
    args = (torch.randn(3, 0), None, None, EPS, group_size)
    with pytest.raises(ValueError):
        rms_norm_gated.native(*clone_args(args))
    with pytest.raises(ValueError, match="group_size"):
        run_provider(rms_norm_gated, "cpu", args)


@pytest.mark.parametrize("group_size", [0, 5, 128])
def test_group_size_out_of_range_is_a_value_error(group_size):
    args = (torch.randn(3, 64), torch.randn(3, 64), None, EPS, group_size)
    with pytest.raises(ValueError, match="group_size"):
        run_provider(rms_norm_gated, "cpu", args)
