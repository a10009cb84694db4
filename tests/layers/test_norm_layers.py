"""Layers against the ops' formulas (ops/norms.py), written out here independently."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.layers import GemmaRMSNorm, Mixer2RMSNormGated, RMSNorm, RMSNormGated


def _rms(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_llama_formula(dtype):
    layer = RMSNorm(64, eps=1e-5, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 64))
    x = torch.randn(5, 64).to(dtype)
    expected = (_rms(x.float(), 1e-5).to(dtype) * layer.weight).to(dtype)
    torch.testing.assert_close(layer(x), expected, **opir.ops.rms_norm.tolerance(dtype)._asdict())


def test_rmsnorm_residual_donates_and_returns_both():
    layer = RMSNorm(32)
    x, residual = torch.randn(4, 32), torch.randn(4, 32)
    s = x + residual
    out, residual_out = layer(x.clone(), residual.clone())
    torch.testing.assert_close(residual_out, s)
    torch.testing.assert_close(out, _rms(s, 1e-6))


def test_rmsnorm_variance_size_and_no_weight():
    layer = RMSNorm(48, variance_size=16, has_weight=False)
    assert layer.weight is None
    x = torch.randn(3, 48)
    inv = torch.rsqrt(x[:, :16].pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(layer(x), x * inv)
    with pytest.raises(ValueError, match="variance_size must be in"):
        RMSNorm(8, variance_size=9)


def test_old_var_hidden_size_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="variance_size"):
        layer = RMSNorm(48, var_hidden_size=16)
    assert layer.variance_size == 16
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="variance_size only"):
        RMSNorm(48, variance_size=16, var_hidden_size=16)


def test_layer_weights_do_not_require_grad():
    for layer in (RMSNorm(8), GemmaRMSNorm(8), RMSNormGated(8), Mixer2RMSNormGated(8, 2)):
        assert not layer.weight.requires_grad


def test_gemma_weight_is_one_plus_w_in_fp32():
    layer = GemmaRMSNorm(8).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.fill_(15.8125)
    assert layer.weight.dtype == torch.bfloat16
    assert (torch.tensor(15.8125, dtype=torch.bfloat16) + 1).item() == 16.75  # the trap
    effective = layer.effective_weight()
    assert effective.dtype == torch.float32 and effective[0].item() == 16.8125
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    expected = (_rms(x.float(), 1e-6) * 16.8125).to(torch.bfloat16)  # one rounding, in fp32
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_gemma_effective_weight_follows_in_place_updates():
    layer = GemmaRMSNorm(4)
    assert torch.equal(layer.effective_weight(), torch.ones(4))
    layer.load_state_dict({"weight": torch.full((4,), 2.0)})
    assert torch.equal(layer.effective_weight(), torch.full((4,), 3.0))


def test_gemma_built_under_inference_mode():
    with torch.inference_mode():
        layer = GemmaRMSNorm(4)
        layer.weight.fill_(1.0)  # inference tensors have no version counter
        assert torch.equal(layer.effective_weight(), torch.full((4,), 2.0))
        layer.weight.fill_(3.0)
        assert torch.equal(layer.effective_weight(), torch.full((4,), 4.0))


def test_gemma_with_residual():
    layer = GemmaRMSNorm(16).to(torch.bfloat16)
    x, residual = torch.randn(2, 16, dtype=torch.bfloat16), torch.randn(2, 16, dtype=torch.bfloat16)
    s = x.float() + residual.float()
    out, res = layer(x.clone(), residual.clone())
    torch.testing.assert_close(res, s.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(out, _rms(s, 1e-6).to(torch.bfloat16), rtol=1.6e-2, atol=1e-3)


def _gated_reference(x, gate, weight, groups, eps):
    y = x.float() * torch.nn.functional.silu(gate.float())
    y = _rms(y.unflatten(-1, (groups, -1)), eps).flatten(-2)
    return (y.to(weight.dtype) * weight).to(x.dtype)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixer2_gate_then_norm(groups, dtype):
    layer = Mixer2RMSNormGated(64, groups, eps=1e-5).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 64))
    x, gate = torch.randn(6, 64).to(dtype), torch.randn(6, 64).to(dtype)
    expected = _gated_reference(x, gate, layer.weight, groups, 1e-5)
    tol = opir.ops.rms_norm_gated.tolerance(dtype)
    torch.testing.assert_close(layer(x, gate), expected, atol=tol.atol, rtol=tol.rtol)
    assert layer.tp_case == (2 if groups == 1 else 4)


def test_mixer2_without_norm_is_the_gate_only():
    layer = Mixer2RMSNormGated(8, 1, use_rms_norm=False)
    x, gate = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(layer(x, gate), x * torch.nn.functional.silu(gate))


def test_rmsnorm_gated_norm_before_gate():
    layer = RMSNormGated(32, group_size=8, norm_before_gate=True)
    x, gate = torch.randn(3, 32), torch.randn(3, 32)
    expected = _rms(x.unflatten(-1, (4, 8)), 1e-6).flatten(-2) * torch.nn.functional.silu(gate)
    torch.testing.assert_close(layer(x, gate), expected)


def test_bad_layer_configs():
    with pytest.raises(ValueError, match="must divide full_hidden_size"):
        Mixer2RMSNormGated(10, 3)
    with pytest.raises(ValueError, match="must divide hidden_size"):
        RMSNormGated(10, group_size=3)


def test_every_layer_accepts_dtype_and_exposes_variance_epsilon():
    for layer in (
        RMSNorm(8, eps=1e-5, dtype=torch.bfloat16),
        GemmaRMSNorm(8, eps=1e-5, dtype=torch.bfloat16),
        RMSNormGated(8, eps=1e-5, dtype=torch.bfloat16),
    ):
        assert layer.weight.dtype == torch.bfloat16
        assert layer.variance_epsilon == layer.eps == 1e-5
        assert layer.hidden_size == 8


def test_rmsnorm_gated_without_gate_is_the_grouped_norm():
    layer = RMSNormGated(16, eps=1e-6, group_size=4)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 16)
    expected = _rms(x.unflatten(-1, (4, 4)), 1e-6).flatten(-2) * layer.weight
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x, None), expected)


def test_rmsnorm_gated_fp32_x_with_bf16_gate():
    layer = RMSNormGated(16).to(torch.bfloat16)
    x, gate = torch.randn(3, 16), torch.randn(3, 16, dtype=torch.bfloat16)
    y = _rms(x * torch.nn.functional.silu(gate.float()), 1e-6)
    out = layer(x, gate)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, y * layer.weight.float())
