"""The ``triton`` provider's quantisation predicates and impls (kernels: ``quant.py``).

The impls belong to ``impls.PROVIDER`` (Triton loads, or fails to, once for every
op). Each predicate accepts what the kernel covers and rejects the rest, which
falls through to the next provider: x in fp32, bf16 or fp16 on the provider's
device (CUDA/ROCm, or CPU under ``TRITON_INTERPRET=1``) with its last dim
contiguous (rows may be strided, leading dims arbitrary), a residual likewise,
a weight of any of those dtypes, any number of rows including zero, every
quantised dtype of the ops (int8, fp8 e4m3fn, fp8 e4m3fnuz). Inputs invalid for
every provider (a bad dtype, scale or group size, mismatched shapes) pass the
predicates and are rejected by the ops' own checks, which the launchers run.

``scaled_mm`` is not Triton: its impl here is ``torch._scaled_mm`` on a CUDA GPU
for fp8 e4m3fn with per-tensor or per-row/column scales (see ``scaled_mm.py``).
"""

from __future__ import annotations

import torch

from opir.ops.all_reduce_norm import all_reduce_rms_norm_quant
from opir.ops.quant import (
    dynamic_group_quant,
    dynamic_quant,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm_dynamic_quant,
    rms_norm_group_quant,
    rms_norm_quant,
    scaled_mm,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.providers.triton.availability import ON_CPU
from opir.providers.triton.impls import PROVIDER

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ok(x) -> bool:
    if x.dtype not in KERNEL_DTYPES or not (x.is_cpu if ON_CPU else x.is_cuda):
        return False
    return x.is_contiguous() or x.stride(-1) == 1


def _ok_weight(x, weight) -> bool:
    return _ok(x) and (weight is None or weight.dtype in KERNEL_DTYPES)


def _ok_residual(x, x_residual, weight) -> bool:
    if not _ok_weight(x, weight):
        return False
    return x_residual.is_contiguous() or x_residual.stride(-1) == 1


def supports_static_quant(x, scale, dtype) -> bool:
    return _ok(x)


def supports_dynamic_quant(x, dtype, per_token=True, scale_ub=None) -> bool:
    return _ok(x)


def supports_dynamic_group_quant(
    x, dtype, group_size=128, column_major_scales=False, scale_ue8m0=False
) -> bool:
    return _ok(x)


def supports_rms_norm_quant(x, weight, epsilon, scale, dtype, weight_bias=0.0) -> bool:
    return _ok_weight(x, weight)


def supports_rms_norm_dynamic_quant(
    x, weight, epsilon, dtype, scale_ub=None, weight_bias=0.0
) -> bool:
    return _ok_weight(x, weight)


def supports_rms_norm_group_quant(
    x,
    weight,
    epsilon,
    dtype,
    group_size=128,
    column_major_scales=False,
    scale_ue8m0=False,
    weight_bias=0.0,
) -> bool:
    return _ok_weight(x, weight)


def supports_fused_add_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, weight_bias=0.0
) -> bool:
    return _ok_residual(x, x_residual, weight)


def supports_fused_add_rms_norm_dynamic_quant(
    x, x_residual, weight, epsilon, dtype, scale_ub=None, weight_bias=0.0
) -> bool:
    return _ok_residual(x, x_residual, weight)


def supports_silu_and_mul_quant(x, scale, dtype) -> bool:
    return _ok(x)


def supports_silu_and_mul_dynamic_quant(x, dtype, scale_ub=None) -> bool:
    return _ok(x)


def supports_all_reduce_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, variance_size=None, weight_bias=0.0
) -> bool:
    if not _ok_weight(x, weight):
        return False
    return x_residual is None or x_residual.is_contiguous() or x_residual.stride(-1) == 1


# torch._scaled_mm (cuBLASLt fp8): CUDA, e4m3fn, a row-major and b column-major with
# K and N multiples of 16, scales per tensor ([1] and [1]) or per row and column
# ([M, 1] and [1, N], bf16 output); no block scales (they fall through).
_MM_OUT = (torch.bfloat16, torch.float16, torch.float32)


def supports_scaled_mm(a, a_scale, b, b_scale, out_dtype, bias=None) -> bool:
    if ON_CPU or not a.is_cuda or a.dtype is not torch.float8_e4m3fn or b.dtype is not a.dtype:
        return False
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] % 16 or b.shape[1] % 16:
        return False
    if not (a.is_contiguous() and b.stride(0) == 1 and b.stride(1) == b.shape[0]):
        return False
    if out_dtype not in _MM_OUT or a_scale.dim() > 2 or b_scale.dim() > 2:
        return False
    if a_scale.numel() == 1 and b_scale.numel() == 1:
        per_tensor = a_scale.dim() == 1 and b_scale.dim() == 1
        return per_tensor and (bias is None or out_dtype is not torch.float32)
    rowwise = tuple(a_scale.shape) == (a.shape[0], 1) and tuple(b_scale.shape) == (1, b.shape[1])
    return rowwise and out_dtype is torch.bfloat16


PROVIDER.register(static_quant, supports_static_quant)
PROVIDER.register(dynamic_quant, supports_dynamic_quant)
PROVIDER.register(dynamic_group_quant, supports_dynamic_group_quant)
PROVIDER.register(rms_norm_quant, supports_rms_norm_quant)
PROVIDER.register(rms_norm_dynamic_quant, supports_rms_norm_dynamic_quant)
PROVIDER.register(rms_norm_group_quant, supports_rms_norm_group_quant)
PROVIDER.register(
    fused_add_rms_norm_quant,
    supports_fused_add_rms_norm_quant,
    inplace=True,
    traceable="traceable_fused_add_rms_norm_quant",
)
PROVIDER.register(
    fused_add_rms_norm_dynamic_quant,
    supports_fused_add_rms_norm_dynamic_quant,
    inplace=True,
    traceable="traceable_fused_add_rms_norm_dynamic_quant",
)
PROVIDER.register(silu_and_mul_quant, supports_silu_and_mul_quant)
PROVIDER.register(silu_and_mul_dynamic_quant, supports_silu_and_mul_dynamic_quant)
PROVIDER.register(
    all_reduce_rms_norm_quant,
    supports_all_reduce_rms_norm_quant,
    traceable="traceable_all_reduce_rms_norm_quant",
)
PROVIDER.register(scaled_mm, supports_scaled_mm, custom_op="scaled_mm")
