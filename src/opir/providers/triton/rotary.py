"""Rotary embeddings, optionally after a per-head RMSNorm: the four ops of ``opir.ops.rotary``.

One kernel, ``rope_kernel``, serves ``rotary_embedding``, ``qk_norm_rope``,
``rotary_pos_emb`` and ``qk_norm_rotary_pos_emb``; constexprs pick:

* where cos/sin come from: ``GATHER`` (vLLM form) reads row ``positions[t]`` of
  the ``cat(cos, sin)`` cache, so both halves of a pair use the same cos and
  sin; otherwise (Hugging Face form) cos/sin are per-(batch, seq) rows of their
  own tensors and the second half of a pair reads columns ``half..rd`` of them
  (``x*cos + rotate_half(x)*sin`` with any cos, not only ``cat(freqs, freqs)``);
* the pair layout: ``NEOX`` (halves of the first ``rd`` columns) or GPT-J
  (even/odd columns);
* ``NORM``: RMS-normalise each head row first (``rms_norm``'s contract with the
  head weight and ``weight_bias``), then rotate the normalised values;
* ``PASS``: also touch columns ``rd..head_size`` (copied to a new output, or
  normalised); an in-place rotation without a norm leaves them alone.

Grid: one program per (outer row, block of ``BLOCK_H`` heads), the query's head
blocks first, then the key's; cos/sin are loaded once per program. An outer
row is a token (vLLM form) or a (batch, seq) pair (Hugging Face form), addressed
as ``(o // inner) * s_a + (o % inner) * s_b`` so strided views (columns of a
fused qkv buffer, Hugging Face's transposed ``[b, h, s, d]``) need no copy.
Every element is loaded before it is stored by the same program, so writing
into the inputs (``maybe_inplace``) is safe.

Numerics (``T`` is the query's dtype): cos/sin are converted to ``T`` first (an
fp32 cache behaves as the cache rounded to ``T``, as in the native), then
``o1 = x1*cos - x2*sin``, ``o2 = x2*cos + x1*sin`` with each product rounded to
``T`` and the sum rounded to ``T``, written out. The product of two bf16 or
fp16 values is exact in fp32, and the sum of two such values rounded to fp32
then to ``T`` equals the sum rounded once to ``T`` (what torch's CPU kernels do),
so the result is bit-identical to the native in bf16 and fp16. bf16 is widened
and rounded by bit arithmetic (Triton 3.9's interpreter flushes bf16 subnormals
and truncates fp32 -> bf16; see ``common.py``). In fp32 a GPU may contract
``a*b - c*d`` into an FMA: within the fp32 tolerance there, bit-identical in the
interpreter.

Positions outside ``[0, max_position)`` are never read past the cache: the
kernel clamps the row index to 0 for them and writes NaN into the rotated
columns of that token (query and key), so a bad position cannot pass silently
as a plausible rotation. The launchers check the range on the host (the
native's ValueError) only where that costs no device synchronisation: CPU
tensors, i.e. the interpreter (docs/rotary.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

import opir.providers.triton.config as config
from opir.ops.checks import check_float
from opir.ops.rotary import (
    _check_head_weight,
    check_pos_emb_args,
    check_positions_range,
    check_rotary_args,
)
from opir.providers.triton.activation import load_f32, round_out, store_out

# OUT codes (constexpr): the dtype T everything rounds to.
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _weight(W, cols, mask, weight_bias, HAS_BIAS: tl.constexpr, W_BF16: tl.constexpr):
    w = load_f32(W + cols, mask, W_BF16)
    if HAS_BIAS:
        w = w + weight_bias
    return w[None, :]


@triton.jit
def _normed(x, rstd, w, ROUND: tl.constexpr, OUT: tl.constexpr):
    """``rms_norm``'s contract for one tile: normalise in fp32, multiply by the weight
    in ``ROUND``'s dtype (round, multiply, round) or fp32, then round to T."""
    y = x * rstd[:, None]
    y = round_out(round_out(y, ROUND) * w, ROUND)
    return round_out(y, OUT)


@triton.jit
def _rope_heads(
    X,
    Y,
    W,
    P,
    COS,
    SIN,
    o,
    a,
    b,
    h0,
    heads,
    x_sh,
    y_sh,
    c_sa,
    c_sb,
    s_sa,
    s_sb,
    max_pos,
    half,
    rd,
    n_pass,
    head_size,
    eps,
    weight_bias,
    GATHER: tl.constexpr,
    NEOX: tl.constexpr,
    NORM: tl.constexpr,
    PASS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    OUT: tl.constexpr,
    C_BF16: tl.constexpr,
    W_BF16: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Heads ``h0 .. h0 + BLOCK_H`` of one outer row: X/Y already point at the row."""
    h = h0 + tl.arange(0, BLOCK_H)
    hmask = h < heads
    j = tl.arange(0, BLOCK_R)
    jmask = j < half
    m = hmask[:, None] & jmask[None, :]
    if NEOX:
        c1 = j
        c2 = j + half
    else:
        c1 = 2 * j
        c2 = 2 * j + 1
    xrow = h.to(tl.int64)[:, None] * x_sh
    yrow = h.to(tl.int64)[:, None] * y_sh
    x1 = load_f32(X + xrow + c1[None, :], m, OUT == 1)
    x2 = load_f32(X + xrow + c2[None, :], m, OUT == 1)
    if PASS:
        p = tl.arange(0, BLOCK_P)
        pmask = hmask[:, None] & (p < n_pass)[None, :]
        xp = load_f32(X + xrow + (rd + p)[None, :], pmask, OUT == 1)

    # cos/sin of this row, converted to T
    if GATHER:
        pos = tl.load(P + o).to(tl.int64)
        valid = (pos >= 0) & (pos < max_pos)
        pos = tl.where(valid, pos, 0)  # never read outside the cache
        crow = COS + pos * c_sa
        cos1 = round_out(load_f32(crow + j * c_sb, jmask, C_BF16), OUT)
        sin1 = round_out(load_f32(crow + (half + j) * c_sb, jmask, C_BF16), OUT)
        cos2 = cos1
        sin2 = sin1
    else:
        crow = COS + a * c_sa + b * c_sb
        srow = SIN + a * s_sa + b * s_sb
        cos1 = round_out(load_f32(crow + j, jmask, C_BF16), OUT)
        cos2 = round_out(load_f32(crow + half + j, jmask, C_BF16), OUT)
        sin1 = round_out(load_f32(srow + j, jmask, C_BF16), OUT)
        sin2 = round_out(load_f32(srow + half + j, jmask, C_BF16), OUT)

    if NORM:
        ss = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)
        if PASS:
            ss += tl.sum(xp * xp, axis=1)
        rstd = tl.rsqrt(ss / head_size + eps)
        x1 = _normed(x1, rstd, _weight(W, c1, jmask, weight_bias, HAS_BIAS, W_BF16), ROUND, OUT)
        x2 = _normed(x2, rstd, _weight(W, c2, jmask, weight_bias, HAS_BIAS, W_BF16), ROUND, OUT)
        if PASS:
            wp = _weight(W, rd + p, p < n_pass, weight_bias, HAS_BIAS, W_BF16)
            xp = _normed(xp, rstd, wp, ROUND, OUT)

    # o1 = x1*cos - x2*sin ; o2 = x2*cos + x1*sin, every product and sum rounded to T
    o1 = round_out(round_out(x1 * cos1[None, :], OUT) - round_out(x2 * sin1[None, :], OUT), OUT)
    o2 = round_out(round_out(x2 * cos2[None, :], OUT) + round_out(x1 * sin2[None, :], OUT), OUT)
    if GATHER:
        o1 = tl.where(valid, o1, float("nan"))
        o2 = tl.where(valid, o2, float("nan"))
    store_out(Y + yrow + c1[None, :], o1, m, OUT)
    store_out(Y + yrow + c2[None, :], o2, m, OUT)
    if PASS:
        store_out(Y + yrow + (rd + p)[None, :], xp, pmask, OUT)


@triton.jit
def rope_kernel(
    Q,
    K,
    QO,
    KO,
    P,
    COS,
    SIN,
    QW,
    KW,
    nq,
    nk,
    nqb,
    inner,
    q_sa,
    q_sb,
    q_sh,
    k_sa,
    k_sb,
    k_sh,
    qo_sa,
    qo_sb,
    qo_sh,
    ko_sa,
    ko_sb,
    ko_sh,
    c_sa,
    c_sb,
    s_sa,
    s_sb,
    max_pos,
    half,
    rd,
    n_pass,
    head_size,
    eps,
    weight_bias,
    GATHER: tl.constexpr,
    NEOX: tl.constexpr,
    NORM: tl.constexpr,
    PASS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    OUT: tl.constexpr,
    C_BF16: tl.constexpr,
    W_BF16: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    o = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    a = o // inner
    b = o % inner
    # the query's head blocks first, then the key's (each branch is a whole call,
    # so no value has to merge two types across it)
    if hb < nqb:
        _rope_heads(
            Q + a * q_sa + b * q_sb, QO + a * qo_sa + b * qo_sb, QW, P, COS, SIN, o, a, b,
            hb * BLOCK_H, nq, q_sh, qo_sh, c_sa, c_sb, s_sa, s_sb, max_pos, half, rd, n_pass,
            head_size, eps, weight_bias, GATHER, NEOX, NORM, PASS, HAS_BIAS, ROUND, OUT,
            C_BF16, W_BF16, BLOCK_H, BLOCK_R, BLOCK_P,
        )  # fmt: skip
    else:
        _rope_heads(
            K + a * k_sa + b * k_sb, KO + a * ko_sa + b * ko_sb, KW, P, COS, SIN, o, a, b,
            (hb - nqb) * BLOCK_H, nk, k_sh, ko_sh, c_sa, c_sb, s_sa, s_sb, max_pos, half, rd,
            n_pass, head_size, eps, weight_bias, GATHER, NEOX, NORM, PASS, HAS_BIAS, ROUND,
            OUT, C_BF16, W_BF16, BLOCK_H, BLOCK_R, BLOCK_P,
        )  # fmt: skip


traceable_kernel = wrap_triton(rope_kernel)
"""The kernel as launched inside a custom op (``triton_op`` sees it)."""


# --- host side -------------------------------------------------------------------

_TILE = 2048  # elements of one [BLOCK_H, head] tile per program


def _p2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _round_code(dtype: torch.dtype, weight: torch.Tensor | None, weight_bias: float) -> int:
    return config.round_code(dtype, weight, weight_bias)


def launch(
    kernel,
    *,
    q: torch.Tensor,
    k: torch.Tensor | None,
    qo: torch.Tensor,
    ko: torch.Tensor | None,
    q_strides: tuple[int, int, int],
    k_strides: tuple[int, int, int],
    qo_strides: tuple[int, int, int],
    ko_strides: tuple[int, int, int],
    nq: int,
    nk: int,
    outer: int,
    inner: int,
    head_size: int,
    rd: int,
    neox: bool,
    positions: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_strides: tuple[int, int],
    sin_strides: tuple[int, int],
    copy_pass: bool,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    epsilon: float = 0.0,
    weight_bias: float = 0.0,
) -> None:
    """Rotate (and normalise) ``q`` into ``qo`` and ``k`` into ``ko``.

    Strides are ``(s_a, s_b, s_head)`` with row ``o`` at ``(o // inner) * s_a +
    (o % inner) * s_b``; the last dim is contiguous. ``positions`` given: vLLM
    form (``cos`` is the cache, ``sin`` unused); else Hugging Face form.
    """
    if outer == 0 or (nq == 0 and nk == 0) or head_size == 0:
        return
    norm = q_weight is not None
    half = rd // 2
    n_pass = head_size - rd
    block_r = _p2(max(half, 1))
    block_p = _p2(max(n_pass, 1))
    width = 2 * block_r + (block_p if n_pass else 0)
    block_h = max(1, min(_p2(max(nq, nk, 1)), _TILE // width, 16))
    nqb = triton.cdiv(nq, block_h)
    nkb = triton.cdiv(nk, block_h) if k is not None else 0
    warps = max(1, min(8, block_h * width // 256))
    if k is None:
        k, ko, k_strides, ko_strides = q, qo, q_strides, qo_strides
    kernel[(outer, nqb + nkb)](
        q,
        k,
        qo,
        ko,
        positions if positions is not None else cos,
        cos,
        sin,
        q_weight if norm else q,
        k_weight if norm else q,
        nq,
        nk,
        nqb,
        inner,
        *q_strides,
        *k_strides,
        *qo_strides,
        *ko_strides,
        *cos_strides,
        *sin_strides,
        cos.shape[0] if positions is not None else 0,
        half,
        rd,
        n_pass,
        head_size,
        float(epsilon),
        float(weight_bias),
        GATHER=positions is not None,
        NEOX=neox,
        NORM=norm,
        PASS=n_pass > 0 and (copy_pass or norm),
        HAS_BIAS=norm and weight_bias != 0.0,
        ROUND=_round_code(q.dtype, q_weight, weight_bias) if norm else 0,
        OUT=_KIND[q.dtype],
        C_BF16=cos.dtype is torch.bfloat16,
        W_BF16=norm and q_weight is not None and q_weight.dtype is torch.bfloat16,
        BLOCK_H=block_h,
        BLOCK_R=block_r,
        BLOCK_P=block_p,
        num_warps=warps,
    )


# --- vLLM form ------------------------------------------------------------------------


def _token_layout(t: torch.Tensor, head_size: int) -> tuple[int, tuple[int, int, int]]:
    """(heads, (token stride, 0, head stride)) of a 2-D or 3-D query/key."""
    if t.dim() == 3:
        return t.shape[1], (t.stride(0), 0, t.stride(1))
    return t.shape[1] // head_size, (t.stride(0), 0, head_size)


def _check_range(positions: torch.Tensor, cache: torch.Tensor, op: str) -> None:
    # A host reduction is free of a device sync only on CPU tensors (the interpreter);
    # on a GPU the kernel itself never reads outside the cache (NaN rows instead).
    if positions.is_cpu:
        check_positions_range(positions, cache.shape[0], op)


def _vllm(
    kernel,
    positions,
    query,
    key,
    head_size,
    cache,
    neox,
    rd,
    qo,
    ko,
    copy_pass,
    q_weight=None,
    k_weight=None,
    epsilon=0.0,
    weight_bias=0.0,
) -> None:
    nq, qs = _token_layout(query, head_size)
    _, qos = _token_layout(qo, head_size)
    nk, ks, kos = 0, qs, qos
    if key is not None:
        nk, ks = _token_layout(key, head_size)
        _, kos = _token_layout(ko, head_size)
    launch(
        kernel,
        q=query,
        k=key,
        qo=qo,
        ko=ko,
        q_strides=qs,
        k_strides=ks,
        qo_strides=qos,
        ko_strides=kos,
        nq=nq,
        nk=nk,
        outer=query.shape[0],
        inner=1,
        head_size=head_size,
        rd=rd,
        neox=neox,
        positions=positions,
        cos=cache,
        sin=cache,
        cos_strides=(cache.stride(0), cache.stride(1)),
        sin_strides=(0, 0),
        copy_pass=copy_pass,
        q_weight=q_weight,
        k_weight=k_weight,
        epsilon=epsilon,
        weight_bias=weight_bias,
    )


def _new(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device)


# The launchers take the op's parameters positionally (see opir.ops.rotary), then the
# kernel: ``rope_kernel``, or ``traceable_kernel`` inside a custom op.


def rotary_embedding(
    positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim,
    kernel=rope_kernel,
) -> list[torch.Tensor]:  # fmt: skip
    """The ``rotary_embedding`` contract into new contiguous tensors."""
    op = "rotary_embedding"
    rd = check_rotary_args(
        positions, query, key, head_size, cos_sin_cache, rotary_dim, op, check_range=False
    )
    _check_range(positions, cos_sin_cache, op)
    qo = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    ko = _new(key)
    _vllm(kernel, positions, query, key, head_size, cos_sin_cache, is_neox_style, rd, qo, ko, True)
    return [qo] if ko is None else [qo, ko]


def rotary_embedding_(
    positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim,
    kernel=rope_kernel,
) -> list[torch.Tensor]:  # fmt: skip
    """``rotary_embedding`` in place: the rotated columns of query (and key) are
    overwritten, everything else in their storage is left untouched."""
    op = "rotary_embedding"
    rd = check_rotary_args(
        positions, query, key, head_size, cos_sin_cache, rotary_dim, op, check_range=False
    )
    _check_range(positions, cos_sin_cache, op)
    _vllm(kernel, positions, query, key, head_size, cos_sin_cache, is_neox_style, rd, query, key,
          False)  # fmt: skip
    return [query] if key is None else [query, key]


def _check_qk_norm(positions, query, key, q_weight, k_weight, epsilon, head_size, cache, rd):
    op = "qk_norm_rope"
    if key is None:
        raise ValueError(f"{op}: key must be a tensor (use rms_norm + rotary_embedding)")
    rd = check_rotary_args(positions, query, key, head_size, cache, rd, op, check_range=False)
    _check_head_weight(q_weight, "q_weight", query, head_size, op)
    _check_head_weight(k_weight, "k_weight", query, head_size, op)
    check_float(epsilon, "epsilon", op)
    _check_range(positions, cache, op)
    return rd


def qk_norm_rope(
    positions, query, key, q_weight, k_weight, epsilon, head_size, cos_sin_cache,
    is_neox_style, rotary_dim, weight_bias, kernel=rope_kernel,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The ``qk_norm_rope`` contract into new contiguous tensors."""
    rd = _check_qk_norm(
        positions, query, key, q_weight, k_weight, epsilon, head_size, cos_sin_cache, rotary_dim
    )
    qo, ko = _new(query), _new(key)
    _vllm(kernel, positions, query, key, head_size, cos_sin_cache, is_neox_style, rd, qo, ko,
          True, q_weight, k_weight, epsilon, weight_bias)  # fmt: skip
    assert qo is not None and ko is not None
    return qo, ko


def qk_norm_rope_(
    positions, query, key, q_weight, k_weight, epsilon, head_size, cos_sin_cache,
    is_neox_style, rotary_dim, weight_bias, kernel=rope_kernel,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``qk_norm_rope`` in place (every column of every head is rewritten)."""
    rd = _check_qk_norm(
        positions, query, key, q_weight, k_weight, epsilon, head_size, cos_sin_cache, rotary_dim
    )
    _vllm(kernel, positions, query, key, head_size, cos_sin_cache, is_neox_style, rd, query, key,
          True, q_weight, k_weight, epsilon, weight_bias)  # fmt: skip
    return query, key


# --- Hugging Face form -------------------------------------------------------------------


def heads_dim(unsqueeze_dim: int) -> int:
    """q's heads dim for a 3-D cos unsqueezed at ``unsqueeze_dim`` (1 or 2, or -3/-2)."""
    return unsqueeze_dim if unsqueeze_dim >= 0 else 4 + unsqueeze_dim


def _hf_out(x: torch.Tensor, rd: int) -> torch.Tensor:
    """A new tensor laid out as the native's result: like torch's elementwise ops on
    ``x`` (dims ordered by x's strides) when every column rotates, contiguous when
    a pass-through part is concatenated."""
    if rd < x.shape[-1]:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    strides = x.stride()
    order = sorted(range(x.dim()), key=lambda d: -strides[d])  # stable: ties keep order
    return torch.empty_permuted(x.shape, order, dtype=x.dtype, device=x.device)


def _hf(kernel, q, k, cos, sin, unsqueeze_dim, qo, ko, q_weight=None, k_weight=None,
        epsilon=0.0, weight_bias=0.0) -> None:  # fmt: skip
    hd = heads_dim(unsqueeze_dim)
    sd = 3 - hd  # the seq dim: 2 for [b, h, s, d], 1 for [b, s, h, d]
    batch, seq = q.shape[0], q.shape[sd]

    def strides(t: torch.Tensor) -> tuple[int, int, int]:
        return t.stride(0), t.stride(sd), t.stride(hd)

    def row(c: torch.Tensor) -> tuple[int, int]:  # broadcast dims of size 1: stride 0
        return (
            c.stride(0) if c.shape[0] != 1 else 0,
            c.stride(1) if c.shape[1] != 1 else 0,
        )

    launch(
        kernel,
        q=q,
        k=k,
        qo=qo,
        ko=ko,
        q_strides=strides(q),
        k_strides=strides(k),
        qo_strides=strides(qo),
        ko_strides=strides(ko),
        nq=q.shape[hd],
        nk=k.shape[hd],
        outer=batch * seq,
        inner=seq,
        head_size=q.shape[-1],
        rd=cos.shape[-1],
        neox=True,
        positions=None,
        cos=cos,
        sin=sin,
        cos_strides=row(cos),
        sin_strides=row(sin),
        copy_pass=True,
        q_weight=q_weight,
        k_weight=k_weight,
        epsilon=epsilon,
        weight_bias=weight_bias,
    )


def rotary_pos_emb(q, k, cos, sin, unsqueeze_dim, kernel=rope_kernel):
    """The ``rotary_pos_emb`` contract (cos/sin of q's dtype; the predicate says which
    layouts) into new tensors laid out as the native's."""
    rd = check_pos_emb_args(q, k, cos, sin, unsqueeze_dim)
    qo, ko = _hf_out(q, rd), _hf_out(k, rd)
    _hf(kernel, q, k, cos, sin, unsqueeze_dim, qo, ko)
    return qo, ko


def qk_norm_rotary_pos_emb(
    q, k, q_weight, k_weight, epsilon, cos, sin, unsqueeze_dim, weight_bias, kernel=rope_kernel
):
    """The ``qk_norm_rotary_pos_emb`` contract into new tensors."""
    op = "qk_norm_rotary_pos_emb"
    rd = check_pos_emb_args(q, k, cos, sin, unsqueeze_dim, op)
    _check_head_weight(q_weight, "q_weight", q, q.shape[-1], op)
    _check_head_weight(k_weight, "k_weight", q, k.shape[-1], op)
    check_float(epsilon, "epsilon", op)
    qo, ko = _hf_out(q, rd), _hf_out(k, rd)
    _hf(kernel, q, k, cos, sin, unsqueeze_dim, qo, ko, q_weight, k_weight, epsilon, weight_bias)
    return qo, ko
