"""RMSNorm family: the native functions are the numerics contract (DESIGN §3).

``f32(t)`` is ``t.float()``; reductions run over the last dim in fp32 with eps
inside the rsqrt; the weight multiply happens in the weight's dtype, so a
same-dtype weight gives Llama's "normalise in fp32, round, multiply" and an
fp32 weight gives Gemma's single rounding.
"""

from __future__ import annotations

import torch

from opir.core.op import register_op


def _normalize(
    s: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """RMS-normalise the fp32 rows of ``s``, apply the weight, cast to ``out_dtype``."""
    sv = s if variance_size is None else s[..., :variance_size]
    y = s * torch.rsqrt(sv.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    if weight is not None:
        y = y.to(weight.dtype) * weight
    return y.to(out_dtype)


@register_op
def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim; rms over the first ``variance_size`` columns."""
    return _normalize(x.float(), weight, epsilon, variance_size, x.dtype)


@register_op(allow_inplace=True)
def fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x + residual`` in fp32; returns (rms_norm of unrounded s, s rounded to x's dtype)."""
    s = x.float() + x_residual.float()
    return _normalize(s, weight, epsilon, variance_size, x.dtype), s.to(x.dtype)


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
