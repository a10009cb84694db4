"""Rotary position embeddings (RoPE) and the per-head q/k RMSNorm before them.

Two forms, each with a fused "q/k norm, then RoPE" variant:

* vLLM form, :func:`rotary_embedding` / :func:`qk_norm_rope`: ``query``/``key``
  of shape ``[tokens, heads * head_size]`` (or ``[tokens, heads, head_size]``),
  a ``cos_sin_cache`` of shape ``[max_position, rotary_dim]`` holding
  ``cat(cos, sin)`` (``rotary_dim // 2`` columns each), gathered by
  ``positions``. Neox style rotates the two halves of the first ``rotary_dim``
  columns of each head; GPT-J style rotates interleaved pairs. Columns
  ``rotary_dim..head_size`` pass through. ``key`` may be None (cross-layer KV
  sharing): the result is then ``[query_out]``, else ``[query_out, key_out]``.
* Hugging Face form, :func:`rotary_pos_emb` / :func:`qk_norm_rotary_pos_emb`:
  ``transformers``' ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)``
  with the per-position ``cos``/``sin`` the model's rotary module computed;
  ``cos.shape[-1] < head_dim`` is partial rotary (the rest passes through).

Numerics (``T`` is query's dtype). vLLM form: cos and sin are gathered and cast
to ``T`` first (an fp32 cache therefore behaves exactly like the cache rounded
to ``T``), then ``o1 = x1*cos - x2*sin``, ``o2 = x2*cos + x1*sin`` are computed in
``T``: each product rounds, and the sum rounds (three roundings in bf16/fp16).
Hugging Face form: ``q*cos + rotate_half(q)*sin`` with torch's type promotion
(same dtypes: the same three roundings; ``rotate_half``'s negation is exact,
so both forms agree bit for bit on neox-style inputs). The q/k-norm ops are
literally opir's ``rms_norm`` native per head followed by the rotary native.
See docs/rotary.md.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

from opir.core.register import register_op
from opir.ops.norms import rms_norm

# --------------------------------------------------------------------------- checks


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, torch.SymInt))


def _traced(t: torch.Tensor) -> bool:
    """Whether ``t``'s values cannot be read: fake/meta tensors, Dynamo tracing, or a
    CUDA graph being captured (reading a value would synchronise the stream)."""
    if torch.compiler.is_compiling() or t.device.type == "meta" or is_fake(t):
        return True
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_positions_range(positions: torch.Tensor, max_position: int, op: str) -> None:
    """Every position is in ``[0, max_position)`` (one reduction; skipped while tracing,
    where values are unknown). Kernels that do not run the native call it (or check
    in the kernel) before any read of the cache."""
    if positions.numel() == 0 or _traced(positions):
        return
    lo, hi = torch.aminmax(positions)
    lo_v, hi_v = int(lo), int(hi)
    if lo_v < 0 or hi_v >= max_position:
        bad = lo_v if lo_v < 0 else hi_v
        raise ValueError(
            f"{op}: positions must be in [0, {max_position}) (cos_sin_cache has "
            f"{max_position} rows), got {bad}; build a longer cache or clamp the positions"
        )


def _check_heads(t: torch.Tensor, name: str, head_size: int, op: str) -> None:
    if t.dim() == 2:
        if t.shape[-1] % head_size:
            raise ValueError(
                f"{op}: head_size ({head_size}) must divide {name}'s last dim "
                f"({t.shape[-1]}) for a 2-D {name} [tokens, heads * head_size]"
            )
    elif t.dim() == 3:
        if t.shape[-1] != head_size:
            raise ValueError(
                f"{op}: a 3-D {name} [tokens, heads, head_size] must have last dim "
                f"head_size ({head_size}), got {t.shape[-1]}"
            )
    else:
        raise ValueError(
            f"{op}: {name} must be 2-D [tokens, heads * head_size] or 3-D "
            f"[tokens, heads, head_size], got {t.dim()}-D {list(t.shape)}"
        )


def check_rotary_args(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None,
    op: str = "rotary_embedding",
    check_range: bool = True,
) -> int:
    """The vLLM-form contract (ValueError naming the argument); returns the rotary dim.

    ``check_range=False`` leaves the positions' range (a device reduction) to the
    caller, e.g. a kernel that checks it while it reads them."""
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        got = list(positions.shape) if isinstance(positions, torch.Tensor) else positions
        raise ValueError(f"{op}: positions must be a 1-D integer tensor [tokens], got {got}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: positions must be int32 or int64, got {positions.dtype}")
    if not query.dtype.is_floating_point:
        raise ValueError(f"{op}: query must be a floating-point tensor, got {query.dtype}")
    if not _is_int(head_size) or head_size <= 0:
        raise ValueError(f"{op}: head_size must be a positive int, got {head_size!r}")
    _check_heads(query, "query", head_size, op)
    if positions.shape[0] != query.shape[0]:
        raise ValueError(
            f"{op}: positions has {positions.shape[0]} entries but query has "
            f"{query.shape[0]} tokens; pass one position per token"
        )
    if positions.device != query.device:
        raise ValueError(f"{op}: positions is on {positions.device} but query is on {query.device}")
    if key is not None:
        if key.dtype != query.dtype or key.device != query.device:
            raise ValueError(
                f"{op}: key must have query's dtype and device, got {key.dtype} {key.device} "
                f"vs {query.dtype} {query.device}"
            )
        if key.dim() != query.dim():
            raise ValueError(
                f"{op}: key must have query's layout ({query.dim()}-D), got {key.dim()}-D "
                f"{list(key.shape)}"
            )
        _check_heads(key, "key", head_size, op)
        if key.shape[0] != query.shape[0]:
            raise ValueError(f"{op}: key has {key.shape[0]} tokens but query has {query.shape[0]}")
    if cos_sin_cache.dim() != 2 or not cos_sin_cache.dtype.is_floating_point:
        raise ValueError(
            f"{op}: cos_sin_cache must be a 2-D floating-point tensor [max_position, "
            f"rotary_dim] = cat(cos, sin), got {cos_sin_cache.dim()}-D {cos_sin_cache.dtype}"
        )
    if cos_sin_cache.device != query.device:
        raise ValueError(
            f"{op}: cos_sin_cache is on {cos_sin_cache.device} but query is on {query.device}"
        )
    width = cos_sin_cache.shape[-1]
    if rotary_dim is None:
        rotary_dim = width
    elif not _is_int(rotary_dim) or rotary_dim != width:
        raise ValueError(
            f"{op}: rotary_dim must be None or cos_sin_cache's last dim ({width}), "
            f"got {rotary_dim!r}"
        )
    if rotary_dim % 2 or rotary_dim > head_size:
        raise ValueError(
            f"{op}: rotary_dim (cos_sin_cache's last dim) must be even and at most "
            f"head_size ({head_size}), got {rotary_dim}"
        )
    if check_range:
        check_positions_range(positions, cos_sin_cache.shape[0], op)
    return rotary_dim


# --------------------------------------------------------------------------- vLLM form


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """Rotate ``x`` [tokens, heads, rotary_dim] by cos/sin [tokens, 1, rotary_dim // 2]
    (already in x's dtype), in x's dtype."""
    if neox:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
    else:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    first = x1 * cos - x2 * sin
    second = x2 * cos + x1 * sin
    if neox:
        return torch.cat((first, second), dim=-1)
    return torch.stack((first, second), dim=-1).flatten(-2)


def _heads(x: torch.Tensor, head_size: int) -> torch.Tensor:
    """``x`` as [tokens, heads, head_size] (a view; zero tokens allowed)."""
    return x if x.dim() == 3 else x.unflatten(-1, (x.shape[-1] // head_size, head_size))


def _rotary_one(
    x: torch.Tensor,
    head_size: int,
    rotary_dim: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    neox: bool,
) -> torch.Tensor:
    heads = _heads(x, head_size)
    rotated = _rotate(heads[..., :rotary_dim], cos, sin, neox)
    return torch.cat((rotated, heads[..., rotary_dim:]), dim=-1).reshape(x.shape)


def apply_rotary(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool,
    rotary_dim: int,
) -> list[torch.Tensor]:
    """The rotary native's arithmetic on checked arguments (shared by the fused op)."""
    gathered = cos_sin_cache.index_select(0, positions)
    half = rotary_dim // 2
    cos = gathered[:, :half].unsqueeze(-2).to(query.dtype)
    sin = gathered[:, half:].unsqueeze(-2).to(query.dtype)
    out = [_rotary_one(query, head_size, rotary_dim, cos, sin, is_neox_style)]
    if key is not None:
        out.append(_rotary_one(key, head_size, rotary_dim, cos, sin, is_neox_style))
    return out


@register_op(activations=("query", "key"), allow_inplace=True)
def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool,
    rotary_dim: int | None = None,
) -> list[torch.Tensor]:
    """vLLM's rotary embedding: ``[query_out]`` (key None) or ``[query_out, key_out]``.

    cos/sin rows gathered by ``positions`` and cast to query's dtype; then per head
    ``o1 = x1*cos - x2*sin``, ``o2 = x2*cos + x1*sin`` in query's dtype (neox: x1, x2
    are the halves of the first ``rotary_dim`` columns; GPT-J: the even and odd
    columns); columns from ``rotary_dim`` on pass through. Same shapes as the inputs.
    """
    rd = check_rotary_args(positions, query, key, head_size, cos_sin_cache, rotary_dim)
    return apply_rotary(positions, query, key, head_size, cos_sin_cache, is_neox_style, rd)


def _check_head_weight(w: torch.Tensor, name: str, x: torch.Tensor, head_size: int, op: str):
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.shape[0] != head_size:
        got = list(w.shape) if isinstance(w, torch.Tensor) else w
        raise ValueError(f"{op}: {name} must have shape [head_size] = [{head_size}], got {got}")
    if not w.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} must be floating point, got {w.dtype}")
    if w.device != x.device:
        raise ValueError(f"{op}: {name} is on {w.device} but query is on {x.device}")


def _per_head_norm(
    x: torch.Tensor, weight: torch.Tensor, epsilon: float, head_size: int, weight_bias: float
) -> torch.Tensor:
    heads = _heads(x, head_size)
    return rms_norm.native(heads, weight, epsilon, None, weight_bias).view(x.shape)


@register_op(activations=("query", "key"), allow_inplace=True)
def qk_norm_rope(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    epsilon: float,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool,
    rotary_dim: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of query (``q_weight``) and key (``k_weight``), then RoPE.

    Exactly ``rms_norm``'s native on each ``[tokens, heads, head_size]`` view (with
    ``weight_bias``), rounded to query's dtype, then ``rotary_embedding``'s native.
    """
    op = "qk_norm_rope"
    if key is None:
        raise ValueError(f"{op}: key must be a tensor (use rms_norm + rotary_embedding)")
    rd = check_rotary_args(positions, query, key, head_size, cos_sin_cache, rotary_dim, op)
    _check_head_weight(q_weight, "q_weight", query, head_size, op)
    _check_head_weight(k_weight, "k_weight", query, head_size, op)
    q = _per_head_norm(query, q_weight, epsilon, head_size, weight_bias)
    k = _per_head_norm(key, k_weight, epsilon, head_size, weight_bias)
    q_out, k_out = apply_rotary(positions, q, k, head_size, cos_sin_cache, is_neox_style, rd)
    return q_out, k_out


# --------------------------------------------------------------------------- HF form


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` of the last dim's halves (Hugging Face's ``rotate_half``)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def check_pos_emb_args(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    unsqueeze_dim: int,
    op: str = "rotary_pos_emb",
) -> int:
    """The Hugging Face form's contract (ValueError naming the argument); returns the
    rotary dim (cos's last dim)."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {got}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
        if t.dim() < 1:
            raise ValueError(f"{op}: {name} must have at least one dimension")
    if cos.shape != sin.shape:
        raise ValueError(
            f"{op}: cos and sin must have the same shape, got {list(cos.shape)} and "
            f"{list(sin.shape)}"
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: k's head_dim ({k.shape[-1]}) must equal q's ({q.shape[-1]})")
    rd = cos.shape[-1]
    if rd % 2 or rd > q.shape[-1]:
        raise ValueError(
            f"{op}: cos's last dim (the rotary dim) must be even and at most q's head_dim "
            f"({q.shape[-1]}), got {rd}"
        )
    if not _is_int(unsqueeze_dim) or not -cos.dim() - 1 <= unsqueeze_dim <= cos.dim():
        raise ValueError(
            f"{op}: unsqueeze_dim must be an int in [{-cos.dim() - 1}, {cos.dim()}] for a "
            f"{cos.dim()}-D cos, got {unsqueeze_dim!r}"
        )
    cos_shape = list(cos.shape)
    cos_shape.insert(unsqueeze_dim if unsqueeze_dim >= 0 else len(cos_shape) + 1 + unsqueeze_dim, 1)
    for name, t in (("q", q), ("k", k)):
        rot = (*t.shape[:-1], rd)
        try:
            shape = torch.broadcast_shapes(rot, tuple(cos_shape))
        except RuntimeError:
            shape = None
        if shape != torch.Size(rot):
            raise ValueError(
                f"{op}: cos.unsqueeze({unsqueeze_dim}) of shape {cos_shape} does not broadcast "
                f"to {name}'s {list(t.shape)} (rotated part {list(rot)}); pass cos/sin as "
                "[batch, seq, rotary_dim] with unsqueeze_dim naming q's heads dim"
            )
    return rd


def apply_pos_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x*cos + rotate_half(x)*sin`` on the first ``cos.shape[-1]`` columns (cos/sin
    already unsqueezed), the rest passed through."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return (x * cos) + (rotate_half(x) * sin)
    rot, rest = x[..., :rd], x[..., rd:]
    out = (rot * cos) + (rotate_half(rot) * sin)
    return torch.cat((out, rest), dim=-1)


@register_op
def rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's ``apply_rotary_pos_emb``: ``q*cos + rotate_half(q)*sin`` (and k)
    with ``cos``/``sin`` unsqueezed at ``unsqueeze_dim``; a cos narrower than the head
    rotates only its first ``cos.shape[-1]`` columns. torch's type promotion applies."""
    check_pos_emb_args(q, k, cos, sin, unsqueeze_dim)
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return apply_pos_emb(q, cos, sin), apply_pos_emb(k, cos, sin)


@register_op
def qk_norm_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    epsilon: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    unsqueeze_dim: int = 1,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of q (``q_weight``) and k (``k_weight``), i.e. per head,
    then :func:`rotary_pos_emb`: exactly the two natives in sequence."""
    op = "qk_norm_rotary_pos_emb"
    check_pos_emb_args(q, k, cos, sin, unsqueeze_dim, op)
    _check_head_weight(q_weight, "q_weight", q, q.shape[-1], op)
    _check_head_weight(k_weight, "k_weight", q, k.shape[-1], op)
    qn = rms_norm.native(q, q_weight, epsilon, None, weight_bias)
    kn = rms_norm.native(k, k_weight, epsilon, None, weight_bias)
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return apply_pos_emb(qn, cos, sin), apply_pos_emb(kn, cos, sin)


# --------------------------------------------------------------------------- inputs


def cos_sin_cache(
    max_position: int,
    rotary_dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The standard RoPE cache ``cat(cos, sin)`` [max_position, rotary_dim], computed in
    fp32 and cast to ``dtype`` (vLLM's and Hugging Face's default frequencies)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim
    inv_freq = 1.0 / (base**exponents)
    t = torch.arange(max_position, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


def _rotary_dim(head_size: int, rotary_dim: int | None, partial: bool) -> int:
    if rotary_dim is not None:
        return rotary_dim
    rd = head_size // 2 if partial else head_size
    return rd - rd % 2


def _rand(shape: tuple[int, ...], dtype, device, generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device).to(dtype)


def _vllm_inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    rotary_dim: int | None,
    partial: bool,
    has_key: bool,
    three_d: bool,
    cache_dtype: torch.dtype | None,
    max_position: int | None,
):
    head_size = hidden_size
    rd = _rotary_dim(head_size, rotary_dim, partial)
    max_pos = max_position if max_position is not None else max(2 * num_tokens, 16)
    positions = torch.randint(0, max_pos, (num_tokens,), generator=generator, device=device)
    q_shape: tuple[int, ...] = (num_tokens, num_heads, head_size)
    k_shape: tuple[int, ...] = (num_tokens, num_kv_heads, head_size)
    if not three_d:
        q_shape, k_shape = (
            (num_tokens, num_heads * head_size),
            (num_tokens, num_kv_heads * head_size),
        )
    query = _rand(q_shape, dtype, device, generator)
    key = _rand(k_shape, dtype, device, generator) if has_key else None
    cache = cos_sin_cache(max_pos, rd, dtype=cache_dtype or dtype, device=device)
    return positions, query, key, head_size, cache, rd


@rotary_embedding.register_input_generator
def _rotary_embedding_inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    rotary_dim: int | None = None,
    partial: bool = False,
    is_neox_style: bool = True,
    has_key: bool = True,
    three_d: bool = False,
    cache_dtype: torch.dtype | None = None,
    max_position: int | None = None,
):
    """``hidden_size`` is the head size; ``partial`` rotates half of each head;
    ``cache_dtype`` defaults to ``dtype`` (pass torch.float32 for an fp32 cache)."""
    positions, query, key, head_size, cache, rd = _vllm_inputs(
        dtype=dtype, device=device, generator=generator, num_tokens=num_tokens,
        hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        rotary_dim=rotary_dim, partial=partial, has_key=has_key, three_d=three_d,
        cache_dtype=cache_dtype, max_position=max_position,
    )  # fmt: skip
    return positions, query, key, head_size, cache, is_neox_style, rd


@qk_norm_rope.register_input_generator
def _qk_norm_rope_inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    rotary_dim: int | None = None,
    partial: bool = False,
    is_neox_style: bool = True,
    three_d: bool = False,
    cache_dtype: torch.dtype | None = None,
    max_position: int | None = None,
    weight_dtype: torch.dtype | None = None,
    epsilon: float = 1e-6,
    weight_bias: float = 0.0,
):
    positions, query, key, head_size, cache, rd = _vllm_inputs(
        dtype=dtype, device=device, generator=generator, num_tokens=num_tokens,
        hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        rotary_dim=rotary_dim, partial=partial, has_key=True, three_d=three_d,
        cache_dtype=cache_dtype, max_position=max_position,
    )  # fmt: skip
    wd = weight_dtype or dtype
    q_weight = (1.0 + 0.1 * torch.randn(head_size, generator=generator, device=device)).to(wd)
    k_weight = (1.0 + 0.1 * torch.randn(head_size, generator=generator, device=device)).to(wd)
    return (
        positions, query, key, q_weight, k_weight, epsilon, head_size, cache, is_neox_style, rd,
        weight_bias,
    )  # fmt: skip


@rotary_pos_emb.register_input_generator
def _hf_inputs(
    *,
    dtype: torch.dtype,
    device,
    generator: torch.Generator,
    num_tokens: int = 4,
    hidden_size: int = 64,
    batch: int = 1,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    rotary_dim: int | None = None,
    partial: bool = False,
    bshd: bool = False,
    cos_dtype: torch.dtype | None = None,
):
    """q [batch, heads, seq, head_dim] (``bshd``: [batch, seq, heads, head_dim]), cos/sin
    [batch, seq, rotary_dim] as Hugging Face's rotary module returns them: the arguments
    of ``rotary_pos_emb``. ``num_tokens`` is the sequence length, ``hidden_size`` the head
    dim; ``bshd`` means unsqueeze_dim=2."""
    head_dim = hidden_size
    rd = _rotary_dim(head_dim, rotary_dim, partial)
    seq = num_tokens
    if bshd:
        q_shape, k_shape = (batch, seq, num_heads, head_dim), (batch, seq, num_kv_heads, head_dim)
    else:
        q_shape, k_shape = (batch, num_heads, seq, head_dim), (batch, num_kv_heads, seq, head_dim)
    q = _rand(q_shape, dtype, device, generator)
    k = _rand(k_shape, dtype, device, generator)
    max_pos = max(2 * seq, 16)
    table = cos_sin_cache(max_pos, rd, device=device)
    pos = torch.randint(0, max_pos, (batch, seq), generator=generator, device=device)
    freqs = table[pos]  # [batch, seq, rd] = cat(cos, sin) of the half frequencies
    half = rd // 2
    cos = torch.cat((freqs[..., :half], freqs[..., :half]), dim=-1).to(cos_dtype or dtype)
    sin = torch.cat((freqs[..., half:], freqs[..., half:]), dim=-1).to(cos_dtype or dtype)
    return q, k, cos, sin, 2 if bshd else 1


@qk_norm_rotary_pos_emb.register_input_generator
def _qk_norm_rotary_pos_emb_inputs(
    *,
    weight_dtype: torch.dtype | None = None,
    epsilon: float = 1e-6,
    weight_bias: float = 0.0,
    **kw,
):
    """``rotary_pos_emb``'s inputs (``_hf_inputs``' keywords) plus per-head weights."""
    q, k, cos, sin, unsqueeze_dim = _hf_inputs(**kw)
    head_dim, generator, device = q.shape[-1], kw["generator"], q.device
    wd = weight_dtype or kw["dtype"]
    q_weight = (1.0 + 0.1 * torch.randn(head_dim, generator=generator, device=device)).to(wd)
    k_weight = (1.0 + 0.1 * torch.randn(head_dim, generator=generator, device=device)).to(wd)
    return q, k, q_weight, k_weight, epsilon, cos, sin, unsqueeze_dim, weight_bias


OPS = (rotary_embedding, rotary_pos_emb, qk_norm_rope, qk_norm_rotary_pos_emb)

# The q/k-norm ops round like rms_norm (normalise -> round -> multiply -> round) before
# the rotation: a kernel's other fp32 summation order can move the norm by two fp16
# ulps, as for the norm ops (bf16's default rtol already covers two ulps).
for _op in (qk_norm_rope, qk_norm_rotary_pos_emb):
    _op.override_tolerance(torch.float16, atol=1e-3, rtol=2e-3)
