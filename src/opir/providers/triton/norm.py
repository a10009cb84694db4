"""RMSNorm with an optional residual add: ``rms_norm`` and ``fused_add_rms_norm``.

One kernel serves both ops (and the local part of ``all_reduce_rms_norm``):
the residual add is a constexpr branch, so each variant compiles to exactly
the code it needs. One program normalises one row; rows are addressed through
``config.row_layout`` so strided rows and any leading dims need no copy. The
residual path normalises the unrounded fp32 sum and stores the sum rounded to
x's dtype. Writing the results into the inputs (``OUT is X``, ``ROUT is R``)
is safe: every element is loaded before it is stored, by the same program.
"""

from __future__ import annotations

from typing import cast

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

import opir.providers.triton.config as config
from opir.ops.checks import check_float, check_like_x, check_size, check_x_weight
from opir.providers.triton.common import apply_weight, to_out


@triton.jit
def norm_kernel(
    X,
    R,
    OUT,
    ROUT,
    W,
    inner,
    x_so,
    x_si,
    r_so,
    r_si,
    o_so,
    o_si,
    ro_so,
    ro_si,
    w_stride,
    n_cols,
    var_cols,
    eps,
    weight_bias,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
    SINGLE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    outer = row // inner
    rin = row % inner
    X += outer * x_so + rin * x_si
    OUT += outer * o_so + rin * o_si
    if HAS_RESIDUAL:
        R += outer * r_so + rin * r_si
        ROUT += outer * ro_so + rin * ro_si
    if SINGLE:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        s = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            s += tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(ROUT + cols, to_out(s, OUT_BF16, ROUT.dtype.element_ty), mask=mask)
        sq = tl.where(cols < var_cols, s * s, 0.0)
        rstd = tl.rsqrt(tl.sum(sq, axis=0) / var_cols + eps)
        y = apply_weight(
            s * rstd, W, cols, mask, w_stride, weight_bias, HAS_WEIGHT, HAS_BIAS, ROUND
        )
        tl.store(OUT + cols, to_out(y, OUT_BF16, OUT.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, var_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < var_cols
            s = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                s += tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)
            acc += s * s
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / var_cols + eps)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            s = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                s += tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(ROUT + cols, to_out(s, OUT_BF16, ROUT.dtype.element_ty), mask=mask)
            y = apply_weight(
                s * rstd, W, cols, mask, w_stride, weight_bias, HAS_WEIGHT, HAS_BIAS, ROUND
            )
            tl.store(OUT + cols, to_out(y, OUT_BF16, OUT.dtype.element_ty), mask=mask)


traceable_kernel = wrap_triton(norm_kernel)
"""The kernel as launched inside a custom op (``triton_op`` sees it)."""


def launch(
    kernel,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    out: torch.Tensor,
    residual_out: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None,
    weight_bias: float,
    fp32_multiply: bool = False,
) -> None:
    """Normalise ``x`` (+ ``residual``) into ``out`` (and ``residual_out``).

    Outputs may be the inputs themselves. ``kernel`` is ``norm_kernel`` for a
    direct launch or its ``wrap_triton`` wrapper inside a custom op.
    """
    n = x.shape[-1]
    if n == 0 or x.numel() == 0:
        return
    rows = x.numel() // n
    # with a residual, residual_out is given too
    tensors = cast(
        tuple[torch.Tensor, ...],
        (x, out) if residual is None else (x, residual, out, residual_out),
    )
    found = [config.row_layout(t) for t in tensors]
    layouts = cast(list[tuple[int, int, int]], found)  # unless None is in it
    if None in found:  # > 3 dims that do not collapse: work on contiguous copies
        copies = [t.contiguous() for t in tensors[: len(tensors) // 2]]
        outs = [torch.empty_like(c) for c in copies]
        r, ro = (copies[1], outs[1]) if residual is not None else (None, None)
        args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
        launch(kernel, copies[0], r, outs[0], ro, *args)
        for dst, src in zip(tensors[len(tensors) // 2 :], outs, strict=True):
            dst.copy_(src)
        return
    has_residual = residual is not None
    if not has_residual:
        (inner, x_so, x_si), (_, o_so, o_si) = layouts
        residual, residual_out = x, out  # unused by the kernel (HAS_RESIDUAL=False)
        r_so = r_si = ro_so = ro_si = 0
    else:
        (inner, x_so, x_si), (_, r_so, r_si), (_, o_so, o_si), (_, ro_so, ro_si) = layouts
    block, warps, single = config.launch_config(n)
    kernel[(rows,)](
        x,
        residual,
        out,
        residual_out,
        x if weight is None else weight,
        inner,
        x_so,
        x_si,
        r_so,
        r_si,
        o_so,
        o_si,
        ro_so,
        ro_si,
        0 if weight is None else weight.stride(0),
        n,
        n if variance_size is None else variance_size,
        epsilon,
        weight_bias,
        HAS_RESIDUAL=has_residual,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=weight_bias != 0.0,
        ROUND=config.ROUND_NONE
        if fp32_multiply
        else config.round_code(x.dtype, weight, weight_bias),
        OUT_BF16=x.dtype is torch.bfloat16,
        BLOCK=block,
        SINGLE=single,
        num_warps=warps,
    )


# The launchers take the op's parameters positionally (see opir.ops.norms for
# their types), then the kernel: ``norm_kernel``, or ``traceable_kernel`` inside
# a custom op.


def rms_norm(
    x, weight, epsilon, variance_size, weight_bias, fp32_multiply=False, kernel=norm_kernel
) -> torch.Tensor:
    """The ``rms_norm`` contract; returns a new contiguous tensor."""
    check_x_weight(x, weight, "rms_norm")
    check_float(epsilon, "epsilon", "rms_norm")
    check_size(variance_size, x.shape[-1], "variance_size", "rms_norm")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    launch(kernel, x, None, out, None, *args)
    return out


def fused_add_rms_norm_(
    x,
    x_residual,
    weight,
    epsilon,
    variance_size,
    weight_bias,
    fp32_multiply=False,
    kernel=norm_kernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``fused_add_rms_norm`` contract in place: out -> x, residual_out -> x_residual."""
    _check_add(x, x_residual, weight, epsilon, variance_size)
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    launch(kernel, x, x_residual, x, x_residual, *args)
    return x, x_residual


def add_rms_norm(
    x,
    x_residual,
    weight,
    epsilon,
    variance_size,
    weight_bias,
    fp32_multiply=False,
    kernel=norm_kernel,
    out=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fused_add_rms_norm`` into new tensors (``out`` may be a buffer the caller owns)."""
    _check_add(x, x_residual, weight, epsilon, variance_size)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    launch(kernel, x, x_residual, out, residual_out, *args)
    return out, residual_out


def _check_add(x, x_residual, weight, epsilon, variance_size) -> None:
    check_x_weight(x, weight, "fused_add_rms_norm")
    check_float(epsilon, "epsilon", "fused_add_rms_norm")
    check_like_x(x, x_residual, "x_residual", "fused_add_rms_norm")
    check_size(variance_size, x.shape[-1], "variance_size", "fused_add_rms_norm")
