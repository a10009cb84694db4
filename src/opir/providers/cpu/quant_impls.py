"""The ``cpu`` provider's int8 / fp8 quantization predicates and impls (``quant_kernels.py``).

Eager calls go straight to the launchers of ``quant.cpp``; under a dispatch mode
(make_fx, FakeTensor, export) the impls call the custom ops
``torch.ops.opir_cpu.<op>`` instead. A failing build follows the kit's
load-failure policy, for this family alone (its own ``PROVIDER``).

What the kernels cover (anything else is rejected by the predicates and falls
through to the next provider): ``dtype`` torch.int8 or torch.float8_e4m3fn
(float8_e4m3fnuz, a ROCm format, goes to native); CPU
tensors in fp32, bf16 or fp16 whose last dim is contiguous (leading dims may
have any strides; nothing is copied), any number of rows including zero; the
norm ops with a weight of any of those dtypes or none; ``silu_and_mul_quant``
and ``silu_and_mul_dynamic_quant`` in bf16 and fp16 only (their fp32 silu is
not bit-identical to the native's fp64 one). Every output is bit-identical to
the native (docs/quantization.md, "cpu provider"). Inputs no provider can run
(a scale that is not one fp32 value, a weight of the wrong length, a residual of
another shape) pass the predicates and are rejected by the kernels with a
ValueError.

``scaled_mm`` (int8, per-tensor / per-token / per-channel scales) is ``torch._int_mm``
plus the native's fp64 epilogue, bit-identical (``scaled_mm.py``; its own Provider,
nothing to build).
"""

from __future__ import annotations

import torch

from opir.ops.quant import (
    dynamic_quant,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm_dynamic_quant,
    rms_norm_quant,
    scaled_mm,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.providers.cpu.impls import family_provider

# Its own Provider of 'cpu' (see family_provider): quant.cpp is built on the first
# quant call, and a failed build withdraws the quant ops only.
PROVIDER = family_provider("opir.providers.cpu.quant_kernels")

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HALF = (torch.bfloat16, torch.float16)
_INT8 = torch.int8
_QUANT = (torch.int8, torch.float8_e4m3fn)  # float8_e4m3fnuz: native

# Predicates: only what the kernels cannot do, reading few attributes (they are on
# the dispatch hot path; the checks are written out rather than shared).


def supports_static_quant(x, scale, dtype) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    return x.is_contiguous() or x.stride(-1) == 1


def supports_dynamic_quant(x, dtype, per_token=True, scale_ub=None) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    return x.is_contiguous() or x.stride(-1) == 1


def supports_rms_norm_quant(x, weight, epsilon, scale, dtype, weight_bias=0.0) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_rms_norm_dynamic_quant(
    x, weight, epsilon, dtype, scale_ub=None, weight_bias=0.0
) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_fused_add_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, weight_bias=0.0
) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if x_residual.dtype is not x.dtype or not (
        x_residual.is_contiguous() or x_residual.stride(-1) == 1
    ):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_fused_add_rms_norm_dynamic_quant(
    x, x_residual, weight, epsilon, dtype, scale_ub=None, weight_bias=0.0
) -> bool:
    if dtype not in _QUANT or x.dtype not in _DTYPES or not x.is_cpu:
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if x_residual.dtype is not x.dtype or not (
        x_residual.is_contiguous() or x_residual.stride(-1) == 1
    ):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_silu_and_mul_quant(x, scale, dtype) -> bool:
    if dtype not in _QUANT or x.dtype not in _HALF or not x.is_cpu:
        return False
    return x.is_contiguous() or x.stride(-1) == 1


def supports_silu_and_mul_dynamic_quant(x, dtype, scale_ub=None) -> bool:
    if dtype not in _QUANT or x.dtype not in _HALF or not x.is_cpu:
        return False
    return x.is_contiguous() or x.stride(-1) == 1


PROVIDER.register(static_quant, supports_static_quant)
PROVIDER.register(dynamic_quant, supports_dynamic_quant)
PROVIDER.register(rms_norm_quant, supports_rms_norm_quant)
PROVIDER.register(rms_norm_dynamic_quant, supports_rms_norm_dynamic_quant)
PROVIDER.register(silu_and_mul_quant, supports_silu_and_mul_quant)
PROVIDER.register(silu_and_mul_dynamic_quant, supports_silu_and_mul_dynamic_quant)
# In place on x_residual; the kernel handles aliasing and overlap itself (a residual
# overlapping x: x is read from a copy; a residual whose elements overlap: a fresh one).
for _op, _supports in (
    (fused_add_rms_norm_quant, supports_fused_add_rms_norm_quant),
    (fused_add_rms_norm_dynamic_quant, supports_fused_add_rms_norm_dynamic_quant),
):
    PROVIDER.register(
        _op, _supports, inplace=True, aliasing_safe=True, traceable=f"{_op.name}_traced"
    )
del _op, _supports

# scaled_mm: torch._int_mm and an fp64 epilogue (scaled_mm.py, nothing to build).
MM_PROVIDER = family_provider("opir.providers.cpu.scaled_mm")
_MAX_K = 131072  # K * 128 * 128 < 2**31: the int32 accumulator is exact


def supports_scaled_mm(a, a_scale, b, b_scale, out_dtype, bias=None) -> bool:
    if a.dtype is not _INT8 or b.dtype is not _INT8 or not a.is_cpu or not b.is_cpu:
        return False
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] >= _MAX_K:
        return False
    # per-tensor / per-token a_scale and per-tensor / per-channel b_scale only (block
    # scales, and shapes that are no scale at all, go to native)
    sa, sb = a_scale.shape, b_scale.shape
    if not (sa == (1,) or sa == (a.shape[0], 1)):
        return False
    return sb == (1,) or sb == (1, 1) or sb == (1, b.shape[1])


MM_PROVIDER.register(scaled_mm, supports_scaled_mm)
