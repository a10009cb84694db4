"""Launch configuration and row layout for the ``triton`` kernels.

Nothing here imports Triton (it is imported with the kernels, on first use).

Block size and warps per row length (``launch_config``), chosen by rule
rather than autotuned so that no call ever pays for tuning:

=====================  ===============  =====  ==============================
elements per row/group BLOCK            warps  kernel shape
=====================  ===============  =====  ==============================
1 - 128                next pow2 >= n   1      one pass, row held in registers
129 - 512              next pow2 >= n   2      one pass
513 - 2048             next pow2 >= n   4      one pass
2049 - 4096            4096             8      one pass
4097 - 16384           8192 or 16384    16     one pass
> 16384                4096             8      two passes over the row
=====================  ===============  =====  ==============================

One pass keeps the row in registers between the sum of squares and the
scaling, so each element is read once; 16 warps (512 threads) hold 32 fp32
values per thread at 16384. Longer rows loop over 4096-wide chunks twice
(sum of squares, then scale and store): one more read of the row. The warps
follow the usual rule for memory-bound row kernels (Liger, vLLM); they are
NOT yet measured on a GPU (docs/gpu-providers.md).
"""

from __future__ import annotations

import functools

import torch

MAX_SINGLE_PASS = 16384
LOOP_BLOCK = 4096
LOOP_WARPS = 8


# ROUND codes: the dtype the weight multiply happens in (the contract's
# promote_types(x.dtype, effective weight dtype)), as a kernel constexpr.
ROUND_NONE, ROUND_BF16, ROUND_FP16 = 0, 1, 2
_ROUND_OF = {torch.float32: ROUND_NONE, torch.bfloat16: ROUND_BF16, torch.float16: ROUND_FP16}


def round_code(x_dtype: torch.dtype, weight: torch.Tensor | None, weight_bias: float) -> int:
    """Where the weight multiply rounds: never (fp32) or to bf16/fp16."""
    if weight is None or weight_bias != 0.0:
        return ROUND_NONE  # no multiply, or an fp32 effective weight
    return _ROUND_OF[torch.promote_types(x_dtype, weight.dtype)]


@functools.cache
def launch_config(n: int) -> tuple[int, int, bool]:
    """(BLOCK, num_warps, single_pass) for rows (or groups) of ``n`` elements."""
    block = 1 << max(n - 1, 0).bit_length()
    if block > MAX_SINGLE_PASS:
        return LOOP_BLOCK, LOOP_WARPS, False
    if block <= 128:
        warps = 1
    elif block <= 512:
        warps = 2
    elif block <= 2048:
        warps = 4
    elif block <= 4096:
        warps = 8
    else:
        warps = 16
    return block, warps, True


def row_layout(t: torch.Tensor) -> tuple[int, int, int] | None:
    """``(inner, outer_stride, inner_stride)`` addressing every row of ``t``.

    Row ``r`` starts at ``(r // inner) * outer_stride + (r % inner) * inner_stride``.
    Covers 1-D, 2-D and 3-D tensors with any strides, and more dims whose leading
    dims collapse into two; None otherwise (the caller copies).
    """
    dim = t.dim()
    if dim == 2:
        return max(t.shape[0], 1), 0, t.stride(0)
    if dim == 3:
        return max(t.shape[1], 1), t.stride(0), t.stride(1)
    if dim == 1:
        return 1, 0, 0
    try:
        v = t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:
        return None
    return max(v.shape[1], 1), v.stride(0), v.stride(1)
