"""Per-op tolerances and input generators."""

from __future__ import annotations

import pytest
import torch

from opir.core.tolerances import DEFAULT_TOLERANCES, Tolerance
from opir.ops import fused_add_rms_norm, rms_norm


def test_defaults_match_the_design():
    assert {
        torch.float32: Tolerance(1e-5, 1.3e-6),
        torch.float16: Tolerance(1e-3, 1e-3),
        torch.bfloat16: Tolerance(1e-3, 1.6e-2),
        # quantised fp8 outputs: exact unless the op overrides (docs/quantization.md)
        torch.float8_e4m3fn: Tolerance(0.0, 0.0),
        torch.float8_e4m3fnuz: Tolerance(0.0, 0.0),
        torch.float8_e5m2: Tolerance(0.0, 0.0),
        torch.float8_e5m2fnuz: Tolerance(0.0, 0.0),
    } == DEFAULT_TOLERANCES


def test_override_is_per_op_and_dtype(scale_op):
    scale_op.override_tolerance(torch.bfloat16, atol=2e-2, rtol=2e-2)
    assert scale_op.tolerance(torch.bfloat16) == Tolerance(2e-2, 2e-2)
    assert scale_op.tolerance(torch.float16) == Tolerance(1e-3, 1e-3)
    assert rms_norm.tolerance(torch.bfloat16) == Tolerance(1e-3, 1.6e-2)


def test_unknown_dtype_names_the_fix(scale_op):
    with pytest.raises(KeyError, match="override_tolerance"):
        scale_op.tolerance(torch.float64)


def test_input_generators_are_seeded_and_shaped():
    a = fused_add_rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=3, hidden_size=7, seed=1)
    b = fused_add_rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=3, hidden_size=7, seed=1)
    x, residual, weight, eps, variance_size = a
    assert x.shape == residual.shape == (3, 7) and weight.shape == (7,)
    assert x.dtype == residual.dtype == weight.dtype == torch.bfloat16
    assert (eps, variance_size) == (1e-6, None)
    for left, right in zip(a[:3], b[:3], strict=True):
        assert torch.equal(left, right)
    _, w32, _, _ = rms_norm.sample_inputs(dtype=torch.bfloat16, weight_dtype=torch.float32)
    assert w32.dtype == torch.float32
    assert rms_norm.sample_inputs(has_weight=False)[1] is None


def test_missing_generator_is_a_clear_error(scale_op):
    with pytest.raises(NotImplementedError, match="register_input_generator"):
        scale_op.sample_inputs()
