"""The ``cpu`` provider's int8 ``scaled_mm``: ``torch._int_mm`` plus an fp64 epilogue.

``torch._int_mm`` (oneDNN, VNNI where the CPU has it; through
``opir.providers.int_mm``, which steps around the operand layouts torch 2.13's CPU
``_int_mm`` sums wrongly) computes ``a @ b`` exactly in int32; the epilogue then
repeats the native's arithmetic on that exact product: ``(acc.double() * a_scale) *
b_scale (+ bias)``, rounded once to ``out_dtype``. The
native's fp64 matmul of int8 values is exact too, so the result is bit-identical
to native whenever the int32 accumulator cannot overflow: ``K * 128 * 128 < 2**31``,
i.e. ``K < 131072`` (the predicate's limit). Measured 10-30x faster than the native
(docs/quantization.md, "cpu provider"). No C++ is built for it: ``load()`` returns
the launcher at once. Block (128 x 128) scales and fp8 go to native.
"""

from __future__ import annotations

import types

import torch

from opir.ops.quant import check_scaled_mm_args, scaled_mm
from opir.providers.cpu.kernels import NAMESPACE
from opir.providers.int_mm import int_mm
from opir.providers.kit import define

MAX_K = 131072
"""``K`` below which the int32 accumulator of int8 products cannot overflow."""

_F64 = torch.float64


def scaled_mm_int8(a, a_scale, b, b_scale, out_dtype, bias=None):
    """``scaled_mm`` of int8 ``a`` [M, K], ``b`` [K, N] with per-tensor / per-token /
    per-channel scales, bit-identical to the native (see the module docstring)."""
    check_scaled_mm_args(a, a_scale, b, b_scale, out_dtype, bias)
    out = int_mm(a, b).to(_F64) * a_scale.to(_F64) * b_scale.to(_F64)
    if bias is not None:
        out = out + bias.to(_F64)
    return out.to(out_dtype)


def load() -> types.SimpleNamespace:
    """The eager launcher (nothing to build)."""
    return types.SimpleNamespace(scaled_mm=scaled_mm_int8)


define(NAMESPACE, scaled_mm, scaled_mm_int8, device_types="cpu")
