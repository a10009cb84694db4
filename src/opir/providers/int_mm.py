"""``int_mm``: ``torch._int_mm`` with the operand layouts it sums correctly on the CPU.

torch 2.13's CPU ``torch._int_mm`` (the exact int8 x int8 -> int32 GEMM a
``scaled_mm`` impl builds on) silently returns wrong sums for an operand whose
rows overlap (an ``expand``-ed, stride-0 view, or a self-overlapping
``as_strided`` one) and for a single row or column whose other stride is odd
(for example ``[1, K]`` with strides ``(8, 1)``: torch calls it contiguous, so
``.contiguous()`` returns it unchanged, and ``_int_mm`` then reads garbage).
``int_mm`` passes row- and column-major operands as they are (``w_q.t()``
included), re-views a single row or column with canonical strides (no copy) and
copies anything else to fresh row-major strides. The canary test in
tests/providers/test_int_mm.py fails once torch fixes this.
"""

from __future__ import annotations

import torch


def int_mm_operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` (2-D) in a layout ``torch._int_mm`` reads correctly on the CPU."""
    (rows, cols), (s0, s1) = t.shape, t.stride()
    if rows > 1 and cols > 1:
        if (s1 == 1 and s0 >= cols) or (s0 == 1 and s1 >= rows):
            return t
    elif (rows <= 1 and (s1 == 1 or cols <= 1)) or (cols <= 1 and (s0 == 1 or rows <= 1)):
        return t.as_strided((rows, cols), (cols, 1))
    return t.clone(memory_format=torch.contiguous_format)


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of int8 ``a`` [M, K] and ``b`` [K, N], exact in int32 (K < 131072),
    whatever the operands' strides."""
    return torch._int_mm(int_mm_operand(a), int_mm_operand(b))
