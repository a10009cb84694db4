"""The ``cpu`` provider's ``scaled_mm`` for int8: ``torch._int_mm`` and an fp32 epilogue.

Written in torch, not C++: ATen's int8 GEMM (``torch._int_mm``, exact int32
accumulation) is the matmul, and the epilogue is
``out_dtype(f32(f32(f32(acc) * a_scale) * b_scale) + f32(bias))`` — the
formulation GPU kernels use (int32 accumulate, fp32 epilogue). Under
``opir.compile`` the function is traced as it is, so Inductor fuses the
epilogue into one pass after the GEMM.

Numerics against native (which is exact in fp64, then one rounding): the int32
accumulator is exact (|acc| <= K * 128 * 128 fits int32 up to K = 131072);
``f32(acc)`` rounds once past 2**24, then two multiplies and the bias add round
once each: ``|got - exact| <= 4 * 2**-24 * (|acc * a_scale * b_scale| + |bias|)``
before the final rounding to ``out_dtype`` (which may then differ by one ulp).
``scaled_mm``'s tolerance covers it (docs/quantization.md).

Covered: int8 ``a`` and ``b`` on the CPU with per-tensor / per-token / per-channel
scales, any strides (``w_q.t()`` included), any M, K, N (zero rows too). Block
scales and fp8 fall through to the next provider (native).

Layouts: torch 2.13's CPU ``torch._int_mm`` returns wrong sums (silently) for
operands whose rows overlap (expanded, stride 0, or self-overlapping views) and
for a single row whose leading stride is smaller than the row (torch calls that
contiguous; ``_int_mm`` then reads garbage). Such an operand is copied to fresh
row-major strides first; row-major and column-major ones (leading stride at
least the row length, ``w_q.t()`` included) go in as they are.
"""

from __future__ import annotations

import torch

from opir.ops.quant import check_scaled_mm_args, scaled_mm

PROVIDER = "cpu"
_INT8 = torch.int8


def supports_scaled_mm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> bool:
    """int8 CPU tensors without 128-block scales (a per-token a_scale has one column)."""
    return (
        a.dtype == _INT8
        and b.dtype == _INT8
        and a.device.type == "cpu"
        and (a_scale.dim() < 2 or a_scale.shape[-1] == 1)
        and (b_scale.dim() < 2 or b_scale.shape[0] == 1)
    )


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` in a layout ``torch._int_mm`` sums correctly on the CPU: row- or column-major
    without overlap as it is; a single row or column with unit stride re-viewed with
    canonical strides (no copy); anything else copied to fresh row-major strides."""
    (rows, cols), (s0, s1) = t.shape, t.stride()
    if rows > 1 and cols > 1:
        if (s1 == 1 and s0 >= cols) or (s0 == 1 and s1 >= rows):
            return t
    elif (rows <= 1 and (s1 == 1 or cols <= 1)) or (cols <= 1 and (s0 == 1 or rows <= 1)):
        return t.as_strided((rows, cols), (cols, 1))
    return t.clone(memory_format=torch.contiguous_format)


@scaled_mm.register_impl(PROVIDER, supports_args=supports_scaled_mm)
def scaled_mm_int8(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch._int_mm(a, b)`` (exact int32), then the fp32 epilogue, then ``out_dtype``."""
    check_scaled_mm_args(a, a_scale, b, b_scale, out_dtype, bias)
    out = torch._int_mm(_plain(a), _plain(b)).float() * a_scale * b_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
