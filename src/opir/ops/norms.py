"""RMSNorm family: the native functions are the numerics contract: what
every provider must match.

``f32(t)`` is ``t.float()``; reductions run over the last dim in fp32 with eps
inside the rsqrt. The weight multiply happens in ``promote_types(x.dtype,
weight.dtype)``: a same-dtype weight gives Llama's "normalise in fp32, round,
multiply"; an fp32 weight with a bf16/fp16 ``x`` gives Gemma's single rounding;
a bf16 weight with an fp32 ``x`` (Hugging Face Mamba2's fp32 residual stream)
multiplies in fp32, as PyTorch's type promotion does in the models' own code.
The result always has ``x``'s dtype.

``fp32_multiply`` (default False) multiplies by the weight in fp32 whatever the
weight's dtype, so the result is rounded once, at the end: "multiply in fp32,
round once" (OLMo-2/3, FlexOlmo, GPT-OSS, Helium, AFMoE, Gemma3n, NemotronH,
FalconH1: ``(weight * normed_fp32).to(dtype)`` with a 16-bit weight). With an
fp32 weight, a ``weight_bias`` or no weight it changes nothing.

``weight_bias`` (default 0.0) makes the effective weight ``f32(weight) +
weight_bias``, computed in fp32 per call: Gemma-style layers store an offset
and pass ``weight_bias=1.0`` with the raw parameter, so no derived weight is
ever cached (a cache goes stale when loaders write through ``param.data``).
"""

from __future__ import annotations

import torch

from opir.core.register import register_op
from opir.ops.checks import check_gate, check_like_x, check_size, check_x_weight


def effective_weight(weight: torch.Tensor | None, weight_bias: float) -> torch.Tensor | None:
    """``weight`` itself, or ``f32(weight) + weight_bias`` when the bias is non-zero."""
    if weight is None or weight_bias == 0.0:
        return weight
    return weight.float() + weight_bias


def apply_weight(
    y: torch.Tensor,
    weight: torch.Tensor | None,
    out_dtype: torch.dtype,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """``y`` (fp32) times the weight in ``promote_types(out_dtype, weight.dtype)``,
    or in fp32 with ``fp32_multiply``."""
    if weight is not None:
        if fp32_multiply:
            return y * weight.float()
        y = y.to(torch.promote_types(out_dtype, weight.dtype)) * weight
    return y


def normalize(
    s: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None,
    out_dtype: torch.dtype,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """RMS-normalise the fp32 rows of ``s``, apply the weight, cast to ``out_dtype``."""
    sv = s if variance_size is None else s[..., :variance_size]
    y = s * torch.rsqrt(sv.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    w = effective_weight(weight, weight_bias)
    return apply_weight(y, w, out_dtype, fp32_multiply).to(out_dtype)


@register_op
def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """``x / rms(x) * (weight + weight_bias)`` over the last dim.

    The rms is taken over the first ``variance_size`` columns (all when None);
    ``fp32_multiply`` multiplies by the weight in fp32 and rounds once.
    """
    check_x_weight(x, weight, "rms_norm")
    check_size(variance_size, x.shape[-1], "variance_size", "rms_norm")
    return normalize(x.float(), weight, epsilon, variance_size, x.dtype, weight_bias, fp32_multiply)


@register_op(allow_inplace=True)
def fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x + residual`` in fp32; returns (rms_norm of unrounded s, s rounded to x's dtype)."""
    check_x_weight(x, weight, "fused_add_rms_norm")
    check_like_x(x, x_residual, "x_residual", "fused_add_rms_norm")
    check_size(variance_size, x.shape[-1], "variance_size", "fused_add_rms_norm")
    s = x.float() + x_residual.float()
    out = normalize(s, weight, epsilon, variance_size, x.dtype, weight_bias, fp32_multiply)
    return out, s.to(x.dtype)


@register_op
def rms_norm_gated(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """Gated RMSNorm, per group of ``group_size`` columns (whole row when None).

    Gate then norm (Mamba2 ``Mixer2RMSNormGated``): ``y = f32(x) * silu(f32(gate))``,
    normalise ``y``, multiply by the weight in ``promote_types(x.dtype, weight.dtype)``,
    cast to x's dtype. ``norm_before_gate`` (Qwen3-Next / FLA): normalise ``f32(x)``,
    multiply by the weight likewise, then by ``silu(f32(gate))`` in fp32, cast once.
    ``gate`` has x's shape and device and any floating dtype (Hugging Face Mamba2 in
    bf16 passes an fp32 ``x`` with a bf16 gate); ``gate=None`` is the plain grouped norm.
    ``fp32_multiply`` multiplies by the weight in fp32 (FalconH1), so only the final cast
    rounds.
    """
    check_x_weight(x, weight, "rms_norm_gated")
    if gate is not None:
        check_gate(x, gate)
    check_size(group_size, x.shape[-1], "group_size", "rms_norm_gated", divides=True)
    hidden = x.shape[-1]
    group = hidden if group_size is None else group_size
    gated = None if gate is None else torch.nn.functional.silu(gate.float())
    y = x.float() if norm_before_gate or gated is None else x.float() * gated
    grouped = y.unflatten(-1, (hidden // group, group)) if hidden else y.unsqueeze(-1)
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    normed = normed.flatten(-2) if hidden else normed.squeeze(-1)
    normed = apply_weight(normed, weight, x.dtype, fp32_multiply)
    if norm_before_gate and gated is not None:
        normed = normed.float() * gated
    return normed.to(x.dtype)


def _norm_inputs(
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    weight_dtype: torch.dtype | None = None,
    has_weight: bool = True,
    epsilon: float = 1e-6,
    variance_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.randn(num_tokens, hidden_size, generator=generator, device=device).to(dtype)
    weight = None
    if has_weight:
        w = 1.0 + 0.1 * torch.randn(hidden_size, generator=generator, device=device)
        weight = w.to(weight_dtype or dtype)
    return x, weight


@rms_norm.register_input_generator
def _rms_norm_inputs(*, epsilon: float = 1e-6, variance_size: int | None = None, **kw):
    x, weight = _norm_inputs(**kw)
    return x, weight, epsilon, variance_size


@fused_add_rms_norm.register_input_generator
def _fused_add_rms_norm_inputs(*, epsilon: float = 1e-6, variance_size: int | None = None, **kw):
    x, weight = _norm_inputs(**kw)
    residual = torch.randn(x.shape, generator=kw["generator"], device=x.device).to(x.dtype)
    return x, residual, weight, epsilon, variance_size


@rms_norm_gated.register_input_generator
def _rms_norm_gated_inputs(
    *,
    epsilon: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    **kw,
):
    x, weight = _norm_inputs(**kw)
    gate = torch.randn(x.shape, generator=kw["generator"], device=x.device).to(x.dtype)
    return x, gate, weight, epsilon, group_size, norm_before_gate


# With a weight of x's dtype the contract rounds twice (normalise -> round ->
# multiply -> round). A last-bit difference in the fp32 rms, which any other
# summation order produces, can flip both roundings: two ulps. bf16's default
# rtol (1.6e-2) already covers two bf16 ulps; fp16's (1e-3) covers one, so the
# norm ops allow two fp16 ulps (2 * 2**-10).
for _op in (rms_norm, fused_add_rms_norm, rms_norm_gated):
    _op.override_tolerance(torch.float16, atol=1e-3, rtol=2e-3)
