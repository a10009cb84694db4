"""Bad input to the norm ops: a clear error or a visible fallback, on every provider."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

PROVIDERS = ["cpu", "native"]


def _run(op, provider, *args):
    with op.set_priority([provider]):
        return op(*args)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_weight_of_wrong_length(provider):
    x = torch.randn(3, 64)
    with pytest.raises((ValueError, RuntimeError), match=r"weight must have shape \[64\]"):
        _run(rms_norm, provider, x, torch.ones(63), 1e-6)
    with pytest.raises((ValueError, RuntimeError), match=r"weight must have shape \[64\]"):
        _run(fused_add_rms_norm, provider, x, x.clone(), torch.ones(2, 64), 1e-6)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_weight_on_another_device(provider):
    with pytest.raises((ValueError, RuntimeError), match=r"weight .*(on the CPU|is on meta)"):
        _run(rms_norm, provider, torch.randn(3, 8), torch.ones(8, device="meta"), 1e-6)


def test_integer_x_is_rejected_by_every_path():
    x = torch.ones(2, 8, dtype=torch.int32)
    with opir.trace() as t, pytest.raises(ValueError, match="x must be a floating-point tensor"):
        rms_norm(x, None, 1e-6)
    assert t.records[0].rejected == (("cpu", "supports_args returned False"),)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_residual_mismatch(provider):
    x = torch.randn(3, 8)
    with pytest.raises((ValueError, RuntimeError), match="residual must match x's shape"):
        _run(fused_add_rms_norm, provider, x, torch.randn(3, 9), None, 1e-6)
    with pytest.raises(ValueError, match="x_residual must match x's shape, dtype"):
        _run(fused_add_rms_norm, provider, x, torch.randn(3, 8).half(), None, 1e-6)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("variance_size", [0, 9, -1])
def test_variance_size_out_of_range(provider, variance_size):
    with pytest.raises((ValueError, RuntimeError), match=r"variance_size must be in \[1, 8\]"):
        _run(rms_norm, provider, torch.randn(3, 8), None, 1e-6, variance_size)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_group_size_must_divide(provider):
    x = torch.randn(2, 12)
    with pytest.raises((ValueError, RuntimeError), match="group_size"):
        _run(rms_norm_gated, provider, x, x.clone(), None, 1e-6, 5)


def test_non_contiguous_last_dim_falls_back_visibly():
    x = torch.randn(8, 3).t()  # last dim has stride 3
    with opir.trace() as t:
        out = rms_norm(x, None, 1e-6)
    assert t.records[0].provider == "native"
    assert t.records[0].rejected == (("cpu", "supports_args returned False"),)
    torch.testing.assert_close(out, rms_norm.native(x.contiguous(), None, 1e-6))
    with opir.strict(), pytest.raises(opir.DispatchError, match="from preferred provider 'cpu'"):
        rms_norm(x, None, 1e-6)


def test_donating_the_same_tensor_twice_gives_the_right_answer():
    # The cpu kernel detects the alias and runs on private copies (providers/cpu).
    x = torch.randn(3, 8)
    expected = fused_add_rms_norm.native(x.clone(), x.clone(), None, 1e-6)
    torch.testing.assert_close(fused_add_rms_norm.maybe_inplace(x, x, None, 1e-6), expected)
