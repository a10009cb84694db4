"""Activation quantisation (int8, fp8 e4m3fn / e4m3fnuz) and its fused producers.

One row kernel serves every quant op of ``opir.ops.quant``; constexprs pick

* the producer of the fp32 values ``y`` that get quantised: ``x`` itself
  (``LOAD``), RMSNorm with an optional residual add (``NORM``; the residual sum
  is stored rounded to x's dtype), or ``silu(gate) * up`` of a ``[gate | up]``
  row (``SILU``). Fused producers round ``y`` to x's dtype first, exactly as the
  natives do (a fused op's native is its unfused natives in sequence);
* where the scale comes from: a static scale tensor (``STATIC``), one dynamic
  scale per row (``ROW``, written to ``[rows, 1]``), one per group of ``GROUP``
  columns (``GROUPS``, written through two strides, so row-major ``[..., K/g]``
  and column-major storage ``[K/g, M]`` are the same code), or only the row's
  absmax (``AMAX``: the first pass of per-tensor dynamic quantisation; the host
  reduces the row maxima with torch and runs the ``STATIC`` pass with the scale).

Numerics (the contract of ``opir.ops.quant``): ``q = cast(clamp(round?(y *
(1 / scale))))`` with the reciprocal taken in fp32 (``div_rn``: correctly
rounded, as torch's; Triton's ``/`` is not on GPUs), the product in fp32, an
explicit clamp, int8 rounded half to even. The dynamic scale is ``max(absmax /
qmax, min_scale)`` (``div_rn``), ue8m0 rounds it up to a power of two by bit
arithmetic (exact). NaN is propagated through the absmax explicitly and
through the clamp by comparisons (``tl.minimum`` drops NaN on GPUs and keeps
it in the interpreter; comparisons behave the same on both).

The conversions to int8 and fp8 are done by integer arithmetic, not ``.to()``:
Triton 3.9's interpreter truncates fp32 -> int8 (and wraps out of range),
flushes fp8 e4m3fn subnormals to zero, and saturates e4m3fnuz to 224 where
torch gives NaN; GPUs round fp8 to nearest even. The bit encoder below gives
round-to-nearest-even fp8 codes (subnormals included) on both, so the
interpreter proves the exact code the GPU runs. fp8 outputs are written as
their uint8 codes (``q.view(torch.uint8)``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

import opir.providers.triton.config as config
from opir.distributed.collectives import all_reduce
from opir.ops.activations import check_x as check_merged_x
from opir.ops.checks import check_all_reduce_args, check_float, check_like_x, check_x_weight
from opir.ops.quant import (
    MIN_SCALE,
    QUANT_MAX,
    SCALE_DTYPE,
    check_float_x,
    check_group_size,
    check_quant_dtype,
    check_scale_ub,
    check_static_scale,
)
from opir.providers.triton.activation import activation, load_f32, round_once, round_out
from opir.providers.triton.common import apply_weight

# PRODUCER codes
LOAD, NORM, SILU = 0, 1, 2
# MODE codes: where the scale comes from
STATIC, ROW, GROUPS, AMAX = 0, 1, 2, 3
# QKIND codes: the quantised dtype
INT8, FP8_FN, FP8_FNUZ = 0, 1, 2
QKIND = {torch.int8: INT8, torch.float8_e4m3fn: FP8_FN, torch.float8_e4m3fnuz: FP8_FNUZ}
# X_KIND codes: x's dtype (as activation.py's OUT codes)
X_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def rne_int(c):
    """``c`` (fp32, |c| < 2**31, not NaN) rounded half to even, as int32, exactly."""
    n = c.to(tl.int32)  # toward zero
    frac = c - n.to(tl.float32)  # exact
    odd = (n & 1) != 0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    down = (frac < -0.5) | ((frac == -0.5) & odd)
    return n + up.to(tl.int32) - down.to(tl.int32)


@triton.jit
def fp8_code(c, FNUZ: tl.constexpr):
    """The fp8 e4m3fn (bias 7) / e4m3fnuz (bias 8) code of ``c`` (fp32, |c| <= max or
    NaN), round to nearest even, subnormals included; int32 in [0, 255]."""
    BIAS: tl.constexpr = 8 if FNUZ else 7
    bits = c.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    e = a >> 23
    # normal: round the 23-bit mantissa to 3 bits (a carry moves into the exponent)
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - ((127 - BIAS) << 3)
    # subnormal: the significand in units of 2**(-2 - BIAS), rounded half to even
    f = (a & 0x7FFFFF) | 0x800000
    sh = tl.minimum(tl.maximum(148 - BIAS - e, 21), 31)
    sub = f >> sh
    rem = f & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    sub += ((rem > half) | ((rem == half) & ((sub & 1) != 0))).to(tl.int32)
    code = tl.where(e >= 128 - BIAS, normal, sub)
    if FNUZ:  # no negative zero; NaN is 0x80
        code = tl.where(code == 0, 0, code | sign)
        code = tl.where(c != c, 0x80, code)
    else:  # NaN is 0x7F with the sign
        code = tl.where(c != c, 0x7F, code) | sign
    return code


@triton.jit
def quantize(y, inv, qmin, qmax, QK: tl.constexpr):
    """``y * inv`` clamped to [qmin, qmax] and converted to the stored code."""
    v = y * inv
    c = tl.where(v > qmax, qmax, tl.where(v < qmin, qmin, v))  # keeps NaN
    if QK == 0:
        nan = c != c
        q = rne_int(tl.where(nan, 0.0, c))
        q = q.to(tl.int8)
    else:
        q = fp8_code(c, QK == 2).to(tl.uint8)
    return q


@triton.jit
def absmax(y, mask, axis: tl.constexpr):
    """max |y| over ``axis``, NaN when any (unmasked) element is NaN."""
    a = tl.where(mask, tl.abs(y), 0.0)
    m = tl.max(a, axis=axis)
    nan = tl.max(tl.where(mask & (y != y), 1, 0), axis=axis)
    return tl.where(nan > 0, float("nan"), m)


@triton.jit
def dyn_scale(amax, ub, qmax, min_scale, HAS_UB: tl.constexpr, UE8M0: tl.constexpr):
    """``max(min(amax, ub) / qmax, min_scale)`` in fp32 (NaN kept), ue8m0: rounded up
    to a power of two."""
    if HAS_UB:
        amax = tl.where(amax > ub, ub, amax)
    s = tl.math.div_rn(amax, qmax)
    s = tl.where(s < min_scale, min_scale, s)
    if UE8M0:
        bits = s.to(tl.int32, bitcast=True)
        up = ((bits & 0x7F800000) + 0x800000).to(tl.float32, bitcast=True)
        finite = (bits & 0x7F800000) != 0x7F800000
        s = tl.where(finite & ((bits & 0x7FFFFF) != 0), up, s)
    return s


@triton.jit
def produce(
    X,
    R,
    W,
    cols,
    mask,
    rstd,
    w_stride,
    weight_bias,
    d,
    PRODUCER: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    XK: tl.constexpr,
):
    """(y, s): the values to quantise (fp32, rounded to x's dtype for fused producers)
    and, with a residual, the fp32 sum ``x + residual``."""
    if PRODUCER == 2:
        g = load_f32(X + cols, mask, XK == 1)
        u = load_f32(X + d + cols, mask, XK == 1)
        act = round_once(activation(g.to(tl.float64), 0.0, 0), XK)
        y = round_out(act * u, XK)
        s = y
    else:
        s = load_f32(X + cols, mask, XK == 1)
        if HAS_RESIDUAL:
            s += load_f32(R + cols, mask, XK == 1)
        y = s
        if PRODUCER == 1:
            y = apply_weight(
                s * rstd, W, cols, mask, w_stride, weight_bias, HAS_WEIGHT, HAS_BIAS, ROUND
            )
            y = round_out(y, XK)
    return y, s


@triton.jit
def store_residual(ROUT, s, cols, mask, XK: tl.constexpr):
    if XK == 1:
        s = round_out(s, 1)
        tl.store(ROUT + cols, (s.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16), mask=mask)
    else:
        tl.store(ROUT + cols, s.to(ROUT.dtype.element_ty), mask=mask)


@triton.jit
def store_group_scales(
    SCALE, s, start, n_cols, s_rs, s_cs, row, BLOCK: tl.constexpr, GROUP: tl.constexpr
):
    """The scales of the groups in columns [start, start + BLOCK) of ``row``."""
    g = start // GROUP + tl.arange(0, BLOCK // GROUP)
    tl.store(SCALE + row * s_rs + g * s_cs, s, mask=g * GROUP < n_cols)


@triton.jit
def quant_kernel(
    X,
    R,
    ROUT,
    W,
    Q,
    SCALE,
    UB,
    inner,
    x_so,
    x_si,
    r_so,
    r_si,
    ro_so,
    ro_si,
    n_cols,
    var_cols,
    w_stride,
    eps,
    weight_bias,
    qmin,
    qmax,
    min_scale,
    s_rs,
    s_cs,
    PRODUCER: tl.constexpr,
    MODE: tl.constexpr,
    QK: tl.constexpr,
    XK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    HAS_UB: tl.constexpr,
    UE8M0: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK: tl.constexpr,
    SINGLE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    outer = row // inner
    rin = row % inner
    X += outer * x_so + rin * x_si
    Q += row * n_cols
    if HAS_RESIDUAL:
        R += outer * r_so + rin * r_si
        ROUT += outer * ro_so + rin * ro_si
    ub = 0.0
    if HAS_UB:
        ub = tl.load(UB).to(tl.float32)
    inv = 1.0
    if MODE == 0:
        inv = tl.math.div_rn(1.0, tl.load(SCALE).to(tl.float32))
    # RMSNorm statistics: as norm.py's kernel, so the fused op equals its unfused kernels
    rstd = 1.0
    if PRODUCER == 1:
        if SINGLE:
            cols = tl.arange(0, BLOCK)
            s = load_f32(X + cols, cols < n_cols, XK == 1)
            if HAS_RESIDUAL:
                s += load_f32(R + cols, cols < n_cols, XK == 1)
            sq = tl.where(cols < var_cols, s * s, 0.0)
            rstd = tl.rsqrt(tl.sum(sq, axis=0) / var_cols + eps)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, var_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                s = load_f32(X + cols, cols < var_cols, XK == 1)
                if HAS_RESIDUAL:
                    s += load_f32(R + cols, cols < var_cols, XK == 1)
                acc += s * s
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / var_cols + eps)
    if SINGLE:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        y, s = produce(
            X, R, W, cols, mask, rstd, w_stride, weight_bias, n_cols,
            PRODUCER, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS, ROUND, XK,
        )  # fmt: skip
        if HAS_RESIDUAL:
            store_residual(ROUT, s, cols, mask, XK)
        if MODE == 3:
            tl.store(SCALE + row, absmax(y, mask, 0))
        elif MODE == 2:
            yg = tl.reshape(y, [BLOCK // GROUP, GROUP])
            mg = tl.reshape(mask, [BLOCK // GROUP, GROUP])
            sc = dyn_scale(absmax(yg, mg, 1), ub, qmax, min_scale, HAS_UB, UE8M0)
            store_group_scales(SCALE, sc, 0, n_cols, s_rs, s_cs, row, BLOCK, GROUP)
            qg = quantize(yg, tl.math.div_rn(1.0, sc)[:, None], qmin, qmax, QK)
            tl.store(Q + cols, tl.reshape(qg, [BLOCK]), mask=mask)
        else:
            if MODE == 1:
                sc = dyn_scale(absmax(y, mask, 0), ub, qmax, min_scale, HAS_UB, UE8M0)
                tl.store(SCALE + row, sc)
                inv = tl.math.div_rn(1.0, sc)
            tl.store(Q + cols, quantize(y, inv, qmin, qmax, QK), mask=mask)
    else:
        if MODE == 1 or MODE == 3:
            # absmax pass (the values are recomputed from memory in the last pass)
            m = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                y, s = produce(
                    X, R, W, cols, mask, rstd, w_stride, weight_bias, n_cols,
                    PRODUCER, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS, ROUND, XK,
                )  # fmt: skip
                a = tl.where(mask, tl.abs(y), 0.0)
                m = tl.where((a > m) | (a != a), a, m)  # keeps NaN
            am = absmax(m, m == m, 0)
            am = tl.where(tl.max(tl.where(m != m, 1, 0), axis=0) > 0, float("nan"), am)
            if MODE == 3:
                tl.store(SCALE + row, am)
            else:
                sc = dyn_scale(am, ub, qmax, min_scale, HAS_UB, UE8M0)
                tl.store(SCALE + row, sc)
                inv = tl.math.div_rn(1.0, sc)
        if MODE != 3:
            # residual stored here, after every read of this row (safe in place)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                y, s = produce(
                    X, R, W, cols, mask, rstd, w_stride, weight_bias, n_cols,
                    PRODUCER, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS, ROUND, XK,
                )  # fmt: skip
                if HAS_RESIDUAL:
                    store_residual(ROUT, s, cols, mask, XK)
                if MODE == 2:
                    yg = tl.reshape(y, [BLOCK // GROUP, GROUP])
                    mg = tl.reshape(mask, [BLOCK // GROUP, GROUP])
                    sc = dyn_scale(absmax(yg, mg, 1), ub, qmax, min_scale, HAS_UB, UE8M0)
                    store_group_scales(SCALE, sc, start, n_cols, s_rs, s_cs, row, BLOCK, GROUP)
                    qg = quantize(yg, tl.math.div_rn(1.0, sc)[:, None], qmin, qmax, QK)
                    tl.store(Q + cols, tl.reshape(qg, [BLOCK]), mask=mask)
                else:
                    tl.store(Q + cols, quantize(y, inv, qmin, qmax, QK), mask=mask)
        elif HAS_RESIDUAL:
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                y, s = produce(
                    X, R, W, cols, mask, rstd, w_stride, weight_bias, n_cols,
                    PRODUCER, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS, ROUND, XK,
                )  # fmt: skip
                store_residual(ROUT, s, cols, mask, XK)


traceable_kernel = wrap_triton(quant_kernel)
"""The kernel as launched inside a custom op (``triton_op`` sees it)."""


# --- host side -------------------------------------------------------------------

# (qmin, qmax) of the clamp; the dynamic scale divides by qmax
LIMITS = {
    torch.int8: (-128.0, 127.0),
    torch.float8_e4m3fn: (-448.0, 448.0),
    torch.float8_e4m3fnuz: (-224.0, 224.0),
}


def launch(
    kernel,
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    producer: int = LOAD,
    mode: int = STATIC,
    residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    epsilon: float = 0.0,
    weight_bias: float = 0.0,
    scale_ub: torch.Tensor | None = None,
    ue8m0: bool = False,
    group: int = 1,
    variance_size: int | None = None,
) -> None:
    """Quantise the rows of ``x`` (through the producer) into the contiguous ``q``.

    ``scale``: the static scale (``STATIC``), or where the dynamic scales go
    (``ROW``: ``[rows]`` contiguous; ``GROUPS``: a ``(rows, K / group)`` view of any
    strides; ``AMAX``: ``[rows]``, the row maxima). ``residual_out`` may be ``residual``.
    """
    n = q.shape[-1]
    if n == 0 or q.numel() == 0:
        return
    rows = q.numel() // n
    tensors = [x] if residual is None or residual_out is None else [x, residual, residual_out]
    found = [config.row_layout(t) for t in tensors]
    if None in found:  # > 3 dims that do not collapse: contiguous copies
        xc = x.contiguous()
        rc = ro = None
        if residual is not None:
            rc = residual.contiguous()
            ro = torch.empty_like(rc)
        launch(
            kernel, xc, q, scale, producer=producer, mode=mode, residual=rc, residual_out=ro,
            weight=weight, epsilon=epsilon, weight_bias=weight_bias, scale_ub=scale_ub,
            ue8m0=ue8m0, group=group, variance_size=variance_size,
        )  # fmt: skip
        if residual_out is not None and ro is not None:
            residual_out.copy_(ro)
        return
    (inner, x_so, x_si) = found[0]  # type: ignore[misc]
    r_so = r_si = ro_so = ro_si = 0
    if residual is not None:
        (_, r_so, r_si), (_, ro_so, ro_si) = found[1], found[2]  # type: ignore[misc]
    s_rs = s_cs = 0
    if mode == GROUPS:
        assert scale is not None
        s_rs, s_cs = scale.stride(0), scale.stride(1)
    block, warps, single = config.launch_config(n)
    if producer == SILU:  # fp64 activations: fewer values per thread
        warps = max(warps, min(16, block // 256))
    qmin, qmax = LIMITS[q.dtype]
    kernel[(rows,)](
        x,
        residual if residual is not None else x,
        residual_out if residual_out is not None else x,
        weight if weight is not None else x,
        q.view(torch.uint8) if q.dtype is not torch.int8 else q,
        scale if scale is not None else x,
        scale_ub if scale_ub is not None else x,
        inner,
        x_so,
        x_si,
        r_so,
        r_si,
        ro_so,
        ro_si,
        n,
        n if variance_size is None else variance_size,
        0 if weight is None else weight.stride(0),
        epsilon,
        weight_bias,
        qmin,
        qmax,
        MIN_SCALE[q.dtype],
        s_rs,
        s_cs,
        PRODUCER=producer,
        MODE=mode,
        QK=QKIND[q.dtype],
        XK=X_KIND[x.dtype],
        HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=weight_bias != 0.0,
        ROUND=config.round_code(x.dtype, weight, weight_bias) if producer == NORM else 0,
        HAS_UB=scale_ub is not None,
        UE8M0=ue8m0,
        GROUP=group,
        BLOCK=block,
        SINGLE=single,
        num_warps=warps,
    )


# --- the ops' contracts ------------------------------------------------------------
# The launchers take the op's parameters positionally (see opir.ops.quant for their
# types and defaults), then the kernel: ``quant_kernel``, or ``traceable_kernel``
# inside a custom op. They run the natives' own checks.


def _empty_q(x: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty((*x.shape[:-1], n), dtype=dtype, device=x.device)


def _row_scales(x: torch.Tensor, kernel, q: torch.Tensor, **kw) -> torch.Tensor:
    """Per-token dynamic quantisation into ``q``; returns the ``[..., 1]`` scales."""
    scale = torch.empty((*x.shape[:-1], 1), dtype=SCALE_DTYPE, device=x.device)
    if q.shape[-1] == 0:  # absmax of nothing is 0: the minimum scale
        scale.fill_(MIN_SCALE[q.dtype])
    launch(kernel, x, q, scale, mode=ROW, **kw)
    return scale


def _norm_checks(x, weight, epsilon, op: str) -> None:
    check_float_x(x, op)
    check_x_weight(x, weight, op)
    check_float(epsilon, "epsilon", op)


def static_quant(x, scale, dtype, kernel=quant_kernel) -> torch.Tensor:
    op = "static_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    launch(kernel, x, q, scale)
    return q


def dynamic_quant(x, dtype, per_token, scale_ub, kernel=quant_kernel):
    op = "dynamic_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_scale_ub(scale_ub, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    if per_token:
        return q, _row_scales(x, kernel, q, scale_ub=scale_ub)
    # per tensor: the rows' absmax (kernel), their max and the scale (torch, as the
    # native computes it), then the static pass
    n = x.shape[-1]
    rows = x.numel() // n if n else 0
    row_max = torch.zeros(max(rows, 1), dtype=SCALE_DTYPE, device=x.device)
    launch(kernel, x, q, row_max, mode=AMAX)
    absmax = row_max.amax().reshape(1)
    if scale_ub is not None:
        absmax = torch.minimum(absmax, scale_ub.reshape(1))
    # divided by a tensor on x's device: CUDA computes ``tensor / python_float`` as a
    # multiply by the reciprocal (one bit short of the contract's division)
    scale = torch.clamp(absmax / absmax.new_full((1,), QUANT_MAX[dtype]), min=MIN_SCALE[dtype])
    launch(kernel, x, q, scale)
    return q, scale


def _group_scales(x: torch.Tensor, groups: int, column_major: bool):
    """(the scales as the op returns them, their ``(rows, groups)`` view for the kernel)."""
    lead = x.shape[:-1]
    rows = math.prod(lead)  # also when x has no columns
    if column_major:
        flat = torch.empty(groups, rows, dtype=SCALE_DTYPE, device=x.device).t()
        out = flat.unflatten(0, lead) if lead else flat.reshape(groups)
    else:
        out = torch.empty((*lead, groups), dtype=SCALE_DTYPE, device=x.device)
        flat = out.view(rows, groups)
    return out, flat


def dynamic_group_quant(
    x, dtype, group_size, column_major_scales, scale_ue8m0, kernel=quant_kernel
):
    op = "dynamic_group_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_group_size(group_size, x.shape[-1], op)
    q = _empty_q(x, x.shape[-1], dtype)
    scales, flat = _group_scales(x, x.shape[-1] // group_size, column_major_scales)
    launch(kernel, x, q, flat, mode=GROUPS, ue8m0=scale_ue8m0, group=group_size)
    return q, scales


def rms_norm_quant(x, weight, epsilon, scale, dtype, weight_bias, kernel=quant_kernel):
    op = "rms_norm_quant"
    _norm_checks(x, weight, epsilon, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    launch(
        kernel, x, q, scale, producer=NORM, weight=weight, epsilon=epsilon,
        weight_bias=weight_bias,
    )  # fmt: skip
    return q


def rms_norm_dynamic_quant(x, weight, epsilon, dtype, scale_ub, weight_bias, kernel=quant_kernel):
    op = "rms_norm_dynamic_quant"
    _norm_checks(x, weight, epsilon, op)
    check_quant_dtype(dtype, op)
    check_scale_ub(scale_ub, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    scale = _row_scales(
        x, kernel, q, producer=NORM, weight=weight, epsilon=epsilon, weight_bias=weight_bias,
        scale_ub=scale_ub,
    )  # fmt: skip
    return q, scale


def rms_norm_group_quant(
    x,
    weight,
    epsilon,
    dtype,
    group_size,
    column_major_scales,
    scale_ue8m0,
    weight_bias,
    kernel=quant_kernel,
):
    op = "rms_norm_group_quant"
    _norm_checks(x, weight, epsilon, op)
    check_quant_dtype(dtype, op)
    check_group_size(group_size, x.shape[-1], op)
    q = _empty_q(x, x.shape[-1], dtype)
    scales, flat = _group_scales(x, x.shape[-1] // group_size, column_major_scales)
    launch(
        kernel, x, q, flat, producer=NORM, mode=GROUPS, weight=weight, epsilon=epsilon,
        weight_bias=weight_bias, ue8m0=scale_ue8m0, group=group_size,
    )  # fmt: skip
    return q, scales


def _add_checks(x, x_residual, weight, epsilon, op: str) -> None:
    _norm_checks(x, weight, epsilon, op)
    check_like_x(x, x_residual, "x_residual", op)


def add_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, weight_bias, kernel=quant_kernel, out=None
):
    """``fused_add_rms_norm_quant``; the new residual goes to ``out`` (``x_residual`` itself
    in place), a new tensor when None."""
    op = "fused_add_rms_norm_quant"
    _add_checks(x, x_residual, weight, epsilon, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    res = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    launch(
        kernel, x, q, scale, producer=NORM, residual=x_residual, residual_out=res,
        weight=weight, epsilon=epsilon, weight_bias=weight_bias,
    )  # fmt: skip
    return q, res


def fused_add_rms_norm_quant(x, x_residual, weight, epsilon, scale, dtype, weight_bias):
    """In place: the new residual into ``x_residual`` (``maybe_inplace``'s donation)."""
    args = (weight, epsilon, scale, dtype, weight_bias)
    return add_rms_norm_quant(x, x_residual, *args, out=x_residual)


def add_rms_norm_dynamic_quant(
    x, x_residual, weight, epsilon, dtype, scale_ub, weight_bias, kernel=quant_kernel, out=None
):
    op = "fused_add_rms_norm_dynamic_quant"
    _add_checks(x, x_residual, weight, epsilon, op)
    check_quant_dtype(dtype, op)
    check_scale_ub(scale_ub, x, op)
    q = _empty_q(x, x.shape[-1], dtype)
    res = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    scale = _row_scales(
        x, kernel, q, producer=NORM, residual=x_residual, residual_out=res, weight=weight,
        epsilon=epsilon, weight_bias=weight_bias, scale_ub=scale_ub,
    )  # fmt: skip
    return q, scale, res


def fused_add_rms_norm_dynamic_quant(x, x_residual, weight, epsilon, dtype, scale_ub, weight_bias):
    """In place: the new residual into ``x_residual``."""
    args = (weight, epsilon, dtype, scale_ub, weight_bias)
    return add_rms_norm_dynamic_quant(x, x_residual, *args, out=x_residual)


def silu_and_mul_quant(x, scale, dtype, kernel=quant_kernel) -> torch.Tensor:
    op = "silu_and_mul_quant"
    check_merged_x(x, op)
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    q = _empty_q(x, x.shape[-1] // 2, dtype)
    launch(kernel, x, q, scale, producer=SILU)
    return q


def silu_and_mul_dynamic_quant(x, dtype, scale_ub, kernel=quant_kernel):
    op = "silu_and_mul_dynamic_quant"
    check_merged_x(x, op)
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_scale_ub(scale_ub, x, op)
    q = _empty_q(x, x.shape[-1] // 2, dtype)
    return q, _row_scales(x, kernel, q, producer=SILU, scale_ub=scale_ub)


def all_reduce_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias, *, traceable=False
):
    """The collective (``opir.distributed.all_reduce``), then the norm -> quant kernel;
    the reduced buffer is fresh, so the new residual is written back into it."""
    op = "all_reduce_rms_norm_quant"
    check_all_reduce_args(x, x_residual, weight, variance_size, weight_bias, op)
    check_float_x(x, op)
    check_float(epsilon, "epsilon", op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    reduced = all_reduce(x)
    if traceable:
        ops = torch.ops.opir_triton
        if x_residual is None:
            q = ops.local_rms_norm_quant.default(
                reduced, weight, epsilon, scale, dtype, variance_size, weight_bias
            )
            return q, reduced
        return ops.local_add_rms_norm_quant.default(
            reduced, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias
        )
    if x_residual is None:
        q = rms_norm_quant_vs(reduced, weight, epsilon, scale, dtype, variance_size, weight_bias)
        return q, reduced
    return add_rms_norm_quant_vs(
        reduced, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias,
        out=reduced,
    )  # fmt: skip


def traceable_all_reduce_rms_norm_quant(*args: object):
    """``all_reduce_rms_norm_quant`` through the custom ops (what lowering records)."""
    return all_reduce_rms_norm_quant(*args, traceable=True)


# The local parts of ``all_reduce_rms_norm_quant`` (checked by it): norm -> quant with
# ``variance_size``, without and with the residual.


def rms_norm_quant_vs(
    x, weight, epsilon, scale, dtype, variance_size, weight_bias, kernel=quant_kernel
):
    q = _empty_q(x, x.shape[-1], dtype)
    launch(
        kernel, x, q, scale, producer=NORM, weight=weight, epsilon=epsilon,
        weight_bias=weight_bias, variance_size=variance_size,
    )  # fmt: skip
    return q


def add_rms_norm_quant_vs(
    x, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias,
    kernel=quant_kernel, out=None,
):  # fmt: skip
    q = _empty_q(x, x.shape[-1], dtype)
    res = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    launch(
        kernel, x, q, scale, producer=NORM, residual=x_residual, residual_out=res,
        weight=weight, epsilon=epsilon, weight_bias=weight_bias, variance_size=variance_size,
    )  # fmt: skip
    return q, res
