"""QuantLinear: quantised weight + per-channel scale, dynamic or static activations,
against a dequantised fp64 reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from opir.layers import QuantLinear
from opir.ops import (
    fused_add_rms_norm_quant,
    rms_norm_dynamic_quant,
    silu_and_mul_dynamic_quant,
)

QDTYPES = [torch.int8, torch.float8_e4m3fn, torch.float8_e4m3fnuz]


def _ids(v):
    return str(v).removeprefix("torch.")


def _linear(k=96, n=40, dtype=torch.bfloat16, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).to(dtype)


def _reference(layer: QuantLinear, x_q, x_scale) -> torch.Tensor:
    """Dequantise both sides in fp64, matmul, add the bias, round once."""
    a = x_q.double() * x_scale.double()
    w = layer.weight.double() * layer.weight_scale.double().t()
    out = a @ w.t()
    if layer.bias is not None:
        out = out + layer.bias.double()
    return out.to(layer.out_dtype)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_forward_matches_the_dequantised_reference(qdtype, bias):
    linear = _linear(bias=bias)
    layer = QuantLinear.from_linear(linear, qdtype)
    x = torch.randn(2, 5, 96).to(torch.bfloat16)
    got = layer(x)
    assert got.shape == (2, 5, 40) and got.dtype == torch.bfloat16
    from opir.ops import dynamic_quant

    x_q, x_scale = dynamic_quant.native(x, qdtype)
    torch.testing.assert_close(got, _reference(layer, x_q, x_scale), atol=1e-2, rtol=2**-7)
    # and it is a linear layer: close to the float one within the quantisation error
    err = (got.float() - linear(x).float()).abs().max()
    assert err < (0.05 if qdtype == torch.int8 else 0.3)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_static_activation(qdtype):
    linear = _linear()
    layer = QuantLinear.from_linear(linear, qdtype, "static", input_scale=4.0 / 127)
    assert layer.input_scale.shape == (1,) and layer.input_scale.dtype == torch.float32
    x = torch.randn(7, 96).to(torch.bfloat16)
    from opir.ops import static_quant

    x_q = static_quant.native(x, layer.input_scale, qdtype)
    torch.testing.assert_close(
        layer(x), _reference(layer, x_q, layer.input_scale), atol=1e-2, rtol=2**-7
    )


def test_weight_scales_follow_the_dynamic_rule():
    linear = _linear(k=64, n=3, dtype=torch.float32)
    with torch.no_grad():
        linear.weight[1] = 0  # an all-zero channel gets the minimum scale, not 0
    layer = QuantLinear.from_linear(linear, torch.int8)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (3, 64)
    assert layer.weight_scale.shape == (1, 3)
    assert layer.weight_scale[0, 1].item() == pytest.approx(1 / (127 * 512))
    assert layer.weight_scale[0, 0].item() == (linear.weight[0].abs().max() / 127).item()
    assert not layer.weight.requires_grad
    w = layer.dequantized_weight()
    assert ((w - linear.weight).abs() <= layer.weight_scale.t() / 2 * 1.0001).all()


def test_forward_quantized_takes_what_the_fused_ops_return():
    layer = QuantLinear.from_linear(_linear(), torch.int8)
    x = torch.randn(6, 96).to(torch.bfloat16)
    w = torch.ones(96, dtype=torch.bfloat16)
    q, s = rms_norm_dynamic_quant(x, w, 1e-6, torch.int8)
    torch.testing.assert_close(
        layer.forward_quantized(q, s), _reference(layer, q, s), atol=1e-2, rtol=2**-7
    )
    sc = torch.tensor([0.03])
    q, _ = fused_add_rms_norm_quant(x, x.clone(), w, 1e-6, sc, torch.int8)
    torch.testing.assert_close(
        layer.forward_quantized(q, sc), _reference(layer, q, sc), atol=1e-2, rtol=2**-7
    )
    up = QuantLinear.from_linear(_linear(k=48, n=8), torch.int8)
    q, s = silu_and_mul_dynamic_quant(x, torch.int8)
    assert up.forward_quantized(q, s).shape == (6, 8)
    # 3-D: per-token scales [..., 1]
    q2, s2 = rms_norm_dynamic_quant(x, w, 1e-6, torch.int8)
    q3, s3 = rms_norm_dynamic_quant(x.reshape(2, 3, 96), w, 1e-6, torch.int8)
    got3 = layer.forward_quantized(q3, s3)
    assert got3.shape == (2, 3, 40)
    assert torch.equal(got3.reshape(6, 40), layer.forward_quantized(q2, s2))


def test_state_dict_round_trip():
    layer = QuantLinear.from_linear(_linear(), torch.int8, "static", torch.tensor([0.02]))
    fresh = QuantLinear(96, 40, dtype=torch.int8, activation="static", input_scale=1.0)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(3, 96).to(torch.bfloat16)
    assert torch.equal(fresh(x), layer(x))
    assert set(layer.state_dict()) == {"weight", "weight_scale", "input_scale", "bias"}
    assert "dtype=torch.int8" in repr(layer)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="dtype must be one of"):
        QuantLinear(8, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="activation must be 'dynamic' or 'static'"):
        QuantLinear(8, 4, activation="per_tensor")
    with pytest.raises(ValueError, match="activation='static' needs input_scale"):
        QuantLinear(8, 4, activation="static")
    with pytest.raises(ValueError, match="activation='static' needs input_scale"):
        QuantLinear(8, 4, input_scale=0.1)
    layer = QuantLinear.from_linear(_linear(), torch.int8)
    with pytest.raises(ValueError, match="b must be \\[K, N\\]"):
        layer(torch.randn(3, 95).to(torch.bfloat16))


def test_traces_in_one_graph():
    layer = QuantLinear.from_linear(_linear(), torch.int8)
    x = torch.randn(3, 96).to(torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x))
