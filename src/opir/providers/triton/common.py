"""Triton helpers shared by the kernels: contract rounding and the weight multiply.

All arithmetic is fp32: operands are loaded and converted with ``.to(tl.float32)``
and the contract's roundings are written out. The product of two bf16 (or
fp16) values is exact in fp32, so "multiply in fp32, round to bf16" is
bit-identical to a bf16 multiply, and Triton's interpreter, whose bf16
arithmetic is unreliable, never does any.

fp32 -> bf16 rounds to nearest even *by bit arithmetic* (``rne_bf16``), not
with ``.to(tl.bfloat16)``: Triton 3.9's interpreter truncates that conversion
(4.0234375 became 4.0 instead of 4.03125), while GPUs round to nearest even.
The bit version gives the GPU's answer on both; once a value is representable
in bf16 the final ``.to`` is exact everywhere. fp32 -> fp16 is left to ``.to``
(the interpreter uses numpy's correctly rounded conversion).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rne_bf16(v):
    """``v`` (fp32) rounded to the nearest bf16 value, ties to even; still fp32."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_out(v, OUT_BF16: tl.constexpr, out_ty: tl.constexpr):
    """``v`` (fp32) converted to the output dtype with round-to-nearest-even."""
    if OUT_BF16:
        v = rne_bf16(v)
    return v.to(out_ty)


@triton.jit
def round_to(v, ROUND: tl.constexpr):
    """``v`` (fp32) rounded to bf16 (ROUND=1) or fp16 (ROUND=2), back in fp32."""
    if ROUND == 1:
        v = rne_bf16(v)
    elif ROUND == 2:
        v = v.to(tl.float16).to(tl.float32)
    return v


@triton.jit
def apply_weight(
    y,
    W,
    cols,
    mask,
    w_stride,
    weight_bias,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
):
    """``y`` times the effective weight in the contract's dtype (see ``ops.norms``).

    ROUND names ``promote_types(x.dtype, effective weight dtype)``: the
    normalised value is rounded to it, multiplied, and the product rounded to it.
    """
    if HAS_WEIGHT:
        w = tl.load(W + cols * w_stride, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            w = w + weight_bias
        y = round_to(round_to(y, ROUND) * w, ROUND)
    return y
