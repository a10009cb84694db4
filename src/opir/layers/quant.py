"""``QuantLinear``: a W8A8 linear layer over opir's quant ops and ``scaled_mm``.

The weight is stored quantised, ``[out_features, in_features]`` in int8 or fp8
(e4m3fn / e4m3fnuz) with one fp32 scale per output channel (``weight_scale``,
shape ``[1, out_features]``: ``scaled_mm``'s per-channel ``b_scale``). The
activation is quantised per token at run time (``activation="dynamic"``:
``dynamic_quant``) or with a fixed per-tensor ``input_scale``
(``activation="static"``: ``static_quant``). The weight's scales follow the same
rule as dynamic activation scales: ``max(absmax / MAX, 1 / (MAX * 512))`` per row.

``forward(x)`` quantises ``x`` and multiplies; ``forward_quantized(x_q, x_scale)``
takes what the fused ops return (``rms_norm_dynamic_quant``,
``fused_add_rms_norm_quant``, ``silu_and_mul_dynamic_quant``, ...), so a model
can normalise and quantise in one kernel and feed the result straight in.

Weights are ``Parameter(requires_grad=False)`` and scales are buffers: opir ops
have no backward.
"""

from __future__ import annotations

import torch
from torch import nn

from opir.ops.quant import (
    QUANT_MAX,
    check_quant_dtype,
    check_static_scale,
    dynamic_quant,
    scaled_mm,
    static_quant,
)

ACTIVATIONS = ("dynamic", "static")


class QuantLinear(nn.Module):
    """``y = scaled_mm(quant(x), x_scale, weight.t(), weight_scale, x.dtype, bias)``.

    Build one from a float layer with :meth:`from_linear`, or construct it empty
    (zero weight, unit scales) and load a quantised state dict (``weight``,
    ``weight_scale``, ``input_scale`` for static activations, ``bias``).

    Example::

        layer = QuantLinear.from_linear(nn.Linear(64, 32), torch.int8)
        y = layer(torch.randn(5, 64))
    """

    weight_scale: torch.Tensor
    input_scale: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.int8,
        activation: str = "dynamic",
        input_scale: torch.Tensor | float | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_quant_dtype(dtype, "QuantLinear")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"QuantLinear: activation must be 'dynamic' or 'static', got {activation!r}"
            )
        if (activation == "static") != (input_scale is not None):
            raise ValueError(
                "QuantLinear: activation='static' needs input_scale (the activation's "
                "per-tensor fp32 scale) and activation='dynamic' takes none; got "
                f"activation={activation!r}, input_scale={input_scale!r}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.dtype, self.activation, self.out_dtype = dtype, activation, out_dtype
        weight = torch.zeros(out_features, in_features, dtype=dtype, device=device)
        self.weight = nn.Parameter(weight, requires_grad=False)
        scale = torch.ones(1, out_features, dtype=torch.float32, device=device)
        self.register_buffer("weight_scale", scale)
        if input_scale is None:
            self.register_buffer("input_scale", None)
        else:
            value = torch.as_tensor(input_scale, dtype=torch.float32, device=device).reshape(1)
            check_static_scale(value, weight, "QuantLinear", "input_scale")
            self.register_buffer("input_scale", value)
        self.bias: nn.Parameter | None
        if bias:
            b = torch.zeros(out_features, dtype=out_dtype, device=device)
            self.bias = nn.Parameter(b, requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        dtype: torch.dtype = torch.int8,
        activation: str = "dynamic",
        input_scale: torch.Tensor | float | None = None,
    ) -> QuantLinear:
        """Quantise ``linear``'s weight per output channel with ``dynamic_quant``'s rule;
        the output dtype (and the bias's) is the linear's weight dtype."""
        w = linear.weight.detach()
        if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"QuantLinear.from_linear: the weight must be float, got {w.dtype}")
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            dtype=dtype,
            activation=activation,
            input_scale=input_scale,
            out_dtype=w.dtype,
            device=w.device,
        )
        q, scale = dynamic_quant.native(w, dtype, True)  # [N, K], [N, 1]
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.weight_scale.copy_(scale.reshape(1, -1))
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantise ``x`` ([..., in_features], any float dtype) and multiply; the result
        has ``out_dtype``."""
        if self.input_scale is None:
            x_q, x_scale = dynamic_quant(x, self.dtype, True)
        else:
            x_q, x_scale = static_quant(x, self.input_scale, self.dtype), self.input_scale
        return self.forward_quantized(x_q, x_scale)

    def forward_quantized(self, x_q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        """``x_q`` [..., in_features] in the layer's dtype with ``x_scale`` per token
        ([..., 1]) or per tensor ([1]), as the quant ops return them."""
        lead = x_q.shape[:-1]
        a = x_q.reshape(-1, x_q.shape[-1])
        a_scale = x_scale if x_scale.dim() <= 1 else x_scale.reshape(-1, 1)
        out = scaled_mm(a, a_scale, self.weight.t(), self.weight_scale, self.out_dtype, self.bias)
        return out.reshape(*lead, self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """``weight * weight_scale`` in fp32 ([out_features, in_features])."""
        return self.weight.float() * self.weight_scale.t()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype}, activation={self.activation}, "
            f"out_dtype={self.out_dtype}, max={QUANT_MAX[self.dtype]}"
        )
