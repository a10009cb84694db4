"""All-reduce + optional residual add + RMSNorm, for TP row-parallel outputs.

The native function is the unfused sequence (the numerics contract every
provider matches), so it is exactly
``norm(all_reduce(x), residual)`` of the unfused layer and is what faster
providers (e.g. a fused GPU kernel) must match.
"""

from __future__ import annotations

import torch

from opir.core.register import register_op
from opir.distributed.collectives import all_reduce
from opir.ops.checks import check_all_reduce_args
from opir.ops.norms import normalize
from opir.ops.quant import (
    QUANT_MAX,
    check_quant_dtype,
    check_static_scale,
    set_fused_tolerances,
    static_quant,
)


@register_op
def all_reduce_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = all_reduce(x)``; with a residual ``s = f32(s) + f32(residual)``;
    returns ``(rms_norm(s) with weight + weight_bias, s.to(x.dtype))``.

    ``weight_bias`` is added to the weight in fp32 (1.0 for Gemma, whose raw
    weight is an offset); with 0.0 the weight multiplies in its own dtype. The
    parameters are in the other norms' order; a float given where
    ``variance_size`` is (the order before opir 0.2) raises a TypeError.
    """
    check_all_reduce_args(x, x_residual, weight, variance_size, weight_bias)
    return _all_reduce_norm(x, x_residual, weight, epsilon, variance_size, weight_bias)


def _all_reduce_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None,
    weight_bias: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    reduced = all_reduce(x)
    if x_residual is None:
        s, residual_out = reduced.float(), reduced
    else:
        s = reduced.float() + x_residual.float()
        residual_out = s.to(x.dtype)
    return normalize(s, weight, epsilon, variance_size, x.dtype, weight_bias), residual_out


@all_reduce_rms_norm.register_input_generator
def _inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    residual: bool = True,
    weight_bias: float = 0.0,
    epsilon: float = 1e-6,
):
    x = torch.randn(num_tokens, hidden_size, generator=generator, device=device).to(dtype)
    r = torch.randn(num_tokens, hidden_size, generator=generator, device=device).to(dtype)
    w = (0.1 * torch.randn(hidden_size, generator=generator, device=device)).to(dtype)
    return x, r if residual else None, w, epsilon, None, weight_bias


@register_op
def all_reduce_rms_norm_quant(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    scale: torch.Tensor,
    dtype: torch.dtype,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out, residual = all_reduce_rms_norm(x, x_residual, weight, epsilon, variance_size,
    weight_bias)``; returns ``(static_quant(out, scale, dtype), residual)``: the normed
    output is rounded to x's dtype first, as the unfused sequence rounds it."""
    op = "all_reduce_rms_norm_quant"
    check_all_reduce_args(x, x_residual, weight, variance_size, weight_bias, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    out, residual = _all_reduce_norm(x, x_residual, weight, epsilon, variance_size, weight_bias)
    return static_quant.native(out, scale, dtype), residual


@all_reduce_rms_norm_quant.register_input_generator
def _quant_inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    residual: bool = True,
    weight_bias: float = 0.0,
    epsilon: float = 1e-6,
    quant_dtype: torch.dtype = torch.int8,
):
    x, r, w, epsilon, _, weight_bias = _inputs(
        dtype=dtype,
        device=device,
        generator=generator,
        num_tokens=num_tokens,
        hidden_size=hidden_size,
        residual=residual,
        weight_bias=weight_bias,
        epsilon=epsilon,
    )
    scale = torch.tensor([4.0 / QUANT_MAX[quant_dtype]], dtype=torch.float32, device=device)
    return x, r, w, epsilon, scale, quant_dtype, None, weight_bias


set_fused_tolerances(all_reduce_rms_norm_quant)
