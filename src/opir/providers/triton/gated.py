"""Gated RMSNorm (``rms_norm_gated``): Mamba2 gate-then-norm and ``norm_before_gate``.

One program normalises one group of one row (grid = rows x groups). The gate
may have any float dtype (Hugging Face Mamba2 passes an fp32 ``x`` with a bf16
gate): it is loaded and converted to fp32 like every operand, and
``silu(g) = g / (1 + exp(-g))`` is computed in fp32 as ``F.silu(gate.float())``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

import opir.providers.triton.config as config
from opir.ops.checks import check_float, check_gate, check_size, check_x_weight
from opir.providers.triton.common import apply_weight, to_out


@triton.jit
def _load_y(X, G, cols, mask, HAS_GATE: tl.constexpr, GATE_FIRST: tl.constexpr):
    y = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE and GATE_FIRST:
        g = tl.load(G + cols, mask=mask, other=0.0).to(tl.float32)
        y = y * (g / (1.0 + tl.exp(-g)))
    return y


@triton.jit
def _finish(n, G, cols, mask, HAS_GATE: tl.constexpr, GATE_FIRST: tl.constexpr):
    if HAS_GATE and not GATE_FIRST:
        g = tl.load(G + cols, mask=mask, other=0.0).to(tl.float32)
        n = n * (g / (1.0 + tl.exp(-g)))
    return n


@triton.jit
def gated_kernel(
    X,
    G,
    OUT,
    W,
    inner,
    x_so,
    x_si,
    g_so,
    g_si,
    w_stride,
    n_cols,
    group,
    eps,
    HAS_GATE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    GATE_FIRST: tl.constexpr,
    ROUND: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
    SINGLE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    first = tl.program_id(1).to(tl.int64) * group
    outer = row // inner
    rin = row % inner
    X += outer * x_so + rin * x_si + first
    G += outer * g_so + rin * g_si + first
    OUT += row * n_cols + first
    W += first * w_stride
    if SINGLE:
        cols = tl.arange(0, BLOCK)
        mask = cols < group
        y = _load_y(X, G, cols, mask, HAS_GATE, GATE_FIRST)
        rstd = tl.rsqrt(tl.sum(y * y, axis=0) / group + eps)
        n = apply_weight(y * rstd, W, cols, mask, w_stride, 0.0, HAS_WEIGHT, False, ROUND)
        n = _finish(n, G, cols, mask, HAS_GATE, GATE_FIRST)
        tl.store(OUT + cols, to_out(n, OUT_BF16, OUT.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, group, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            y = _load_y(X, G, cols, cols < group, HAS_GATE, GATE_FIRST)
            acc += y * y
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / group + eps)
        for start in range(0, group, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < group
            y = _load_y(X, G, cols, mask, HAS_GATE, GATE_FIRST)
            n = apply_weight(y * rstd, W, cols, mask, w_stride, 0.0, HAS_WEIGHT, False, ROUND)
            n = _finish(n, G, cols, mask, HAS_GATE, GATE_FIRST)
            tl.store(OUT + cols, to_out(n, OUT_BF16, OUT.dtype.element_ty), mask=mask)


traceable_kernel = wrap_triton(gated_kernel)
"""The kernel as launched inside a custom op (``triton_op`` sees it)."""


def rms_norm_gated(
    x,
    gate,
    weight,
    epsilon,
    group_size,
    norm_before_gate,
    fp32_multiply=False,
    kernel=gated_kernel,
) -> torch.Tensor:
    """The ``rms_norm_gated`` contract (the op's parameters positionally, then the
    kernel); returns a new contiguous tensor."""
    check_x_weight(x, weight, "rms_norm_gated")
    check_float(epsilon, "epsilon", "rms_norm_gated")
    if gate is not None:
        check_gate(x, gate)
    n = x.shape[-1]
    check_size(group_size, n, "group_size", "rms_norm_gated", divides=True)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n == 0 or x.numel() == 0:
        return out
    lx = config.row_layout(x)
    lg = lx if gate is None else config.row_layout(gate)
    if lx is None or lg is None:  # > 3 dims that do not collapse
        g = None if gate is None else gate.contiguous()
        args = (weight, epsilon, group_size, norm_before_gate, fp32_multiply, kernel)
        return out.copy_(rms_norm_gated(x.contiguous(), g, *args))
    group = n if group_size is None else group_size
    block, warps, single = config.launch_config(group)
    (inner, x_so, x_si), (_, g_so, g_si) = lx, lg
    kernel[(x.numel() // n, n // group)](
        x,
        x if gate is None else gate,
        out,
        x if weight is None else weight,
        inner,
        x_so,
        x_si,
        g_so,
        g_si,
        0 if weight is None else weight.stride(0),
        n,
        group,
        epsilon,
        HAS_GATE=gate is not None,
        HAS_WEIGHT=weight is not None,
        GATE_FIRST=not norm_before_gate,
        ROUND=config.ROUND_NONE if fp32_multiply else config.round_code(x.dtype, weight, 0.0),
        OUT_BF16=x.dtype is torch.bfloat16,
        BLOCK=block,
        SINGLE=single,
        num_warps=warps,
    )
    return out
