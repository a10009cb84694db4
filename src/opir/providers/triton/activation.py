"""Gated-MLP activations: ``act(gate) * up`` for every op of ``opir.ops.activations``.

One kernel serves all of them; constexprs pick the activation and where gate and
up live in memory:

* merged ``[gate | up]`` rows (``silu_and_mul``, ``gelu_and_mul``, ...): gate at
  column 0, up at column ``d`` of the same row (``mul_and_silu``: the other way);
* interleaved rows (``swigluoai_and_mul``): gate at the even, up at the odd columns;
* two tensors (``silu_mul``, ``gelu_mul``): Hugging Face's ``act(gate_proj(x)) *
  up_proj(x)`` without a concatenation.

Rows are addressed through ``config.row_layout`` (strided rows, any leading dims,
no copy); the output is a new contiguous tensor. Grid: one program per (row,
block of ``BLOCK`` output columns); ``gelu_and_mul_sparse`` needs its row's
statistics first, so it runs one program per row that loops over the row.

Numerics (the ops' contract): the activation is computed in **fp64** and rounded
once to x's dtype, then ``act * up`` is rounded once more in x's dtype. The
kernels compute the activation in fp64 too, with the native's formulas (only
``exp`` and ``erf`` are needed; GELU-tanh is ``g / (1 + exp(-2y))`` in the contract
too, see ``opir.ops.activations.gelu_tanh_f64``), and round it as ATen's ``.to``
does: fp64 -> fp32 -> bf16/fp16, each round-to-nearest-even (so the native's
"rounded once" is, bit for bit, that pair of roundings; a correctly rounded
fp64 -> 16-bit conversion differs from it in ~1e-9 of inputs). The product of
two bf16 or fp16 values is exact in fp32, so multiplying in fp32 and rounding
once equals a 16-bit multiply. bf16 operands are widened and stored by bit
arithmetic (Triton 3.9's interpreter flushes bf16 subnormals in its
conversions and truncates fp32 -> bf16).

Measured against the native in the interpreter
(``tests/providers/test_triton_activations.py``): bit-identical in bf16 and fp16
for every op on the test grid, for every bf16 value in [-6, 6] as a gate (silu,
gelu erf), for every bf16 and fp16 value as a GELU-tanh gate, and for overflowing,
subnormal, infinite and NaN gates. fp32: within the tolerance.

Why fp64 rather than fp32 plus an fp64 recomputation of the lanes near a
rounding boundary: in fp16 about one element in a thousand lies that close, so
every block of a few thousand elements would take the fp64 path anyway; a
data-dependent branch buys nothing on the GPUs this targets (H100/H200: half
the fp32 rate in fp64, and the op is memory-bound). On consumer GPUs with 1/64
fp64 rate it is compute-bound; measure before relying on it there.

Scalars that enter fp64 arithmetic (``alpha``, ``std_multiplier``) travel as three
fp32 parts whose fp64 sum is the Python float exactly (Triton passes Python
floats as fp32); ``threshold`` travels rounded toward -inf to fp32, which gives
the same ``gate > threshold`` for every fp32-representable gate.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

import opir.providers.triton.config as config
from opir.ops.activations import check_approximate, check_gate_up, check_x
from opir.ops.checks import check_float
from opir.providers.triton.common import rne_bf16

# ACT codes (constexpr): which activation.
SILU, GELU, GELU_TANH, FATRELU, SWIGLUOAI = 0, 1, 2, 3, 4
# OUT codes (constexpr): the output dtype.
_OUT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def round_out(v, OUT: tl.constexpr):
    """``v`` (fp32) rounded to the output dtype (round-to-nearest-even); still fp32."""
    if OUT == 1:
        v = rne_bf16(v)
    elif OUT == 2:
        v = v.to(tl.float16).to(tl.float32)
    return v


@triton.jit
def round_once(v, OUT: tl.constexpr):
    """``v`` (fp64) rounded to the output dtype as torch's ``.to`` does; returned as fp32.

    ATen converts fp64 to bf16/fp16 through fp32 (two round-to-nearest-even
    steps), so this does too: it is the native's rounding, bit for bit.
    """
    return round_out(v.to(tl.float32), OUT)


@triton.jit
def load_f32(P, mask, IN_BF16: tl.constexpr):
    """Load and widen to fp32; bf16 by bit shift (exact for subnormals too, which
    Triton 3.9's interpreter flushes in its bf16 -> fp32 conversion)."""
    v = tl.load(P, mask=mask, other=0.0)
    if IN_BF16:
        v = (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return v.to(tl.float32)


@triton.jit
def store_out(P, y, mask, OUT: tl.constexpr):
    """Store ``y`` (fp32, already representable in the output dtype); bf16 by bits."""
    if OUT == 1:
        y = (y.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(P, y.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _join(hi, mid, lo):
    return tl.cast(hi, tl.float64) + tl.cast(mid, tl.float64) + tl.cast(lo, tl.float64)


@triton.jit
def activation(g, alpha, ACT: tl.constexpr):
    """The activation of ``g`` (fp64) in fp64, as the native writes it."""
    if ACT == 0:  # silu
        a = g / (1.0 + tl.exp(-g))
    elif ACT == 1:  # gelu, erf form
        a = g * 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
    elif ACT == 2:  # gelu, tanh form, as the native: g * sigmoid(2y), no tanh
        y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = g / (1.0 + tl.exp(-2.0 * y))
    elif ACT == 4:  # gpt-oss: gate * sigmoid(gate * alpha)
        a = g * (1.0 / (1.0 + tl.exp(-(g * alpha))))
    else:  # fatrelu is applied by the caller (a comparison, no arithmetic)
        a = g
    return a


@triton.jit
def act_mul_kernel(
    G,
    U,
    OUT,
    inner,
    g_so,
    g_si,
    u_so,
    u_si,
    g_off,
    u_off,
    d,
    threshold,
    p_hi,
    p_mid,
    p_lo,
    l_hi,
    l_mid,
    l_lo,
    ACT: tl.constexpr,
    STEP: tl.constexpr,
    SPARSE: tl.constexpr,
    OUT_KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    outer = row // inner
    rin = row % inner
    G += outer * g_so + rin * g_si + g_off
    U += outer * u_so + rin * u_si + u_off
    OUT += row * d
    param = _join(p_hi, p_mid, p_lo)  # alpha (swigluoai) or std_multiplier (sparse)
    if SPARSE:
        # Per-row statistics of the gate in fp64: mean, then population std.
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, d, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            acc += load_f32(G + cols * STEP, cols < d, OUT_KIND == 1).to(tl.float64)
        mean = tl.sum(acc, axis=0) / d
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, d, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < d
            dev = load_f32(G + cols * STEP, mask, OUT_KIND == 1).to(tl.float64) - mean
            acc += tl.where(mask, dev * dev, 0.0)
        cutoff = mean + tl.sqrt(tl.sum(acc, axis=0) / d) * param
        first = 0
        step = BLOCK
    else:
        cutoff = 0.0
        first = tl.program_id(1) * BLOCK
        step = d  # one block per program
    for start in range(first, d, step):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < d
        g = load_f32(G + cols * STEP, mask, OUT_KIND == 1)
        u = load_f32(U + cols * STEP, mask, OUT_KIND == 1)
        if ACT == 3:
            act = tl.where(g > threshold, g, 0.0)
        else:
            g64 = g.to(tl.float64)
            if SPARSE:  # relu(gate - cutoff) in fp64, rounded to x's dtype
                g64 = round_once(tl.maximum(g64 - cutoff, 0.0), OUT_KIND).to(tl.float64)
            if ACT == 4:  # clamps against the exact limit; clamped up rounds, then + 1 rounds
                limit = _join(l_hi, l_mid, l_lo)
                g64 = tl.minimum(g64, limit)
                u64 = tl.minimum(tl.maximum(u.to(tl.float64), -limit), limit)
                u = round_out(round_once(u64, OUT_KIND) + 1.0, OUT_KIND)
            act = round_once(activation(g64, param, ACT), OUT_KIND)
        y = round_out(act * u, OUT_KIND)
        store_out(OUT + cols, y, mask, OUT_KIND)


traceable_kernel = wrap_triton(act_mul_kernel)
"""The kernel as launched inside a custom op (``triton_op`` sees it)."""


# --- host side -------------------------------------------------------------------


def _f32(v: float) -> float:
    """``v`` rounded to the nearest fp32 value (inf beyond fp32's range)."""
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def split3(v: float) -> tuple[float, float, float]:
    """Three fp32 values whose fp64 sum is ``v`` exactly (for normal-range ``v``)."""
    v = float(v)
    hi = _f32(v)
    if not math.isfinite(hi):
        return hi, 0.0, 0.0
    mid = _f32(v - hi)
    return hi, mid, _f32(v - hi - mid)


def below_f32(t: float) -> float:
    """The largest fp32 value <= ``t``: ``g > t`` iff ``g > below_f32(t)`` for fp32 ``g``."""
    t = float(t)
    f = _f32(t)
    if f > t:  # rounded up: one fp32 step down
        if f == 0.0:
            return -1.401298464324817e-45
        bits = struct.unpack("I", struct.pack("f", f))[0]
        f = struct.unpack("f", struct.pack("I", bits - 1 if f > 0 else bits + 1))[0]
    return f


def launch(
    kernel,
    gate: torch.Tensor,
    up: torch.Tensor,
    g_off: int,
    u_off: int,
    step: int,
    d: int,
    out: torch.Tensor,
    act: int,
    *,
    threshold: float = 0.0,
    param: float = 0.0,
    limit: float = 0.0,
    sparse: bool = False,
) -> None:
    """Write ``act(gate) * up`` into the contiguous ``out`` (rows of ``d``)."""
    if d == 0 or out.numel() == 0:
        return
    rows = out.numel() // d
    lg, lu = config.row_layout(gate), config.row_layout(up)
    if lg is None or lu is None:  # > 3 dims that do not collapse: contiguous copies
        same = gate is up
        gate = gate.contiguous()
        up = gate if same else up.contiguous()
        lg, lu = config.row_layout(gate), config.row_layout(up)
    assert lg is not None and lu is not None  # contiguous tensors always have one
    (inner, g_so, g_si), (_, u_so, u_si) = lg, lu
    if sparse:
        block = min(max(triton.next_power_of_2(d), 16), 4096)
        grid = (rows, 1)
    else:
        block = min(max(triton.next_power_of_2(d), 16), 1024)
        grid = (rows, triton.cdiv(d, block))
    hi, mid, lo = split3(param)
    l_hi, l_mid, l_lo = split3(limit)
    kernel[grid](
        gate,
        up,
        out,
        inner,
        g_so,
        g_si,
        u_so,
        u_si,
        g_off,
        u_off,
        d,
        below_f32(threshold),
        hi,
        mid,
        lo,
        l_hi,
        l_mid,
        l_lo,
        ACT=act,
        STEP=step,
        SPARSE=sparse,
        OUT_KIND=_OUT[out.dtype],
        BLOCK=block,
        num_warps=4 if block >= 1024 else (2 if block >= 256 else 1),
    )


# --- the ops' contracts ------------------------------------------------------------

_ACT_OF = {"none": GELU, "tanh": GELU_TANH}


def _merged(x: torch.Tensor, op: str) -> tuple[int, torch.Tensor]:
    """Check ``x`` (``[..., 2d]``) and allocate the ``[..., d]`` output."""
    check_x(x, op)
    d = x.shape[-1] // 2
    return d, torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)


def _pair(gate: torch.Tensor, up: torch.Tensor, op: str) -> torch.Tensor:
    check_gate_up(gate, up, op)
    if gate.dim() < 1:
        raise ValueError(f"{op}: gate must have at least one dimension")
    return torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)


def _gelu_code(approximate: str, op: str) -> int:
    check_approximate(approximate, op)
    return _ACT_OF[approximate]


# The launchers take the op's parameters positionally (see opir.ops.activations for
# their types and defaults), then the kernel: ``act_mul_kernel``, or
# ``traceable_kernel`` inside a custom op. Floats are checked here because the
# host code would otherwise convert a str (or fail inside Triton) where native
# raises a TypeError.


def silu_and_mul(x, kernel=act_mul_kernel) -> torch.Tensor:
    d, out = _merged(x, "silu_and_mul")
    launch(kernel, x, x, 0, d, 1, d, out, SILU)
    return out


def mul_and_silu(x, kernel=act_mul_kernel) -> torch.Tensor:
    d, out = _merged(x, "mul_and_silu")
    launch(kernel, x, x, d, 0, 1, d, out, SILU)
    return out


def gelu_and_mul(x, approximate, kernel=act_mul_kernel) -> torch.Tensor:
    act = _gelu_code(approximate, "gelu_and_mul")
    d, out = _merged(x, "gelu_and_mul")
    launch(kernel, x, x, 0, d, 1, d, out, act)
    return out


def fatrelu_and_mul(x, threshold, kernel=act_mul_kernel) -> torch.Tensor:
    d, out = _merged(x, "fatrelu_and_mul")
    check_float(threshold, "threshold", "fatrelu_and_mul")
    launch(kernel, x, x, 0, d, 1, d, out, FATRELU, threshold=threshold)
    return out


def gelu_and_mul_sparse(x, std_multiplier, approximate, kernel=act_mul_kernel) -> torch.Tensor:
    act = _gelu_code(approximate, "gelu_and_mul_sparse")
    d, out = _merged(x, "gelu_and_mul_sparse")
    check_float(std_multiplier, "std_multiplier", "gelu_and_mul_sparse")
    launch(kernel, x, x, 0, d, 1, d, out, act, param=std_multiplier, sparse=True)
    return out


def swigluoai_and_mul(x, alpha, limit, kernel=act_mul_kernel) -> torch.Tensor:
    d, out = _merged(x, "swigluoai_and_mul")
    check_float(alpha, "alpha", "swigluoai_and_mul")
    check_float(limit, "limit", "swigluoai_and_mul")
    launch(kernel, x, x, 0, 1, 2, d, out, SWIGLUOAI, param=alpha, limit=limit)
    return out


def silu_mul(gate, up, kernel=act_mul_kernel) -> torch.Tensor:
    out = _pair(gate, up, "silu_mul")
    launch(kernel, gate, up, 0, 0, 1, gate.shape[-1], out, SILU)
    return out


def gelu_mul(gate, up, approximate, kernel=act_mul_kernel) -> torch.Tensor:
    act = _gelu_code(approximate, "gelu_mul")
    out = _pair(gate, up, "gelu_mul")
    launch(kernel, gate, up, 0, 0, 1, gate.shape[-1], out, act)
    return out
