"""The rotary ops' natives: bit for bit vLLM's forward_native and transformers'
apply_rotary_pos_emb, the q/k-norm ops as compositions, and every bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_rope

from opir.ops import (
    qk_norm_rope,
    qk_norm_rotary_pos_emb,
    rms_norm,
    rotary_embedding,
    rotary_pos_emb,
)
from opir.ops.rotary import cos_sin_cache

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def vllm_reference(positions, query, key, head_size, cache, neox, rotary_dim):
    """vLLM 0.32's RotaryEmbedding.forward_native, written out per token and head:
    cos/sin rows cast to query's dtype, then x1*cos - x2*sin and x2*cos + x1*sin, each
    product and each sum in query's dtype."""
    dtype, half = query.dtype, rotary_dim // 2

    def rotate(x):
        out = x.reshape(x.shape[0], -1, head_size).clone()
        for t in range(out.shape[0]):
            row = cache[int(positions[t])]
            c, s = row[:half].to(dtype), row[half:rotary_dim].to(dtype)
            for h in range(out.shape[1]):
                v = out[t, h, :rotary_dim].clone()
                a, b = (v[:half], v[half:]) if neox else (v[0::2], v[1::2])
                first = torch.sub(torch.mul(a, c), torch.mul(b, s))
                second = torch.add(torch.mul(b, c), torch.mul(a, s))
                if neox:
                    out[t, h, :half], out[t, h, half:rotary_dim] = first, second
                else:
                    out[t, h, 0:rotary_dim:2], out[t, h, 1:rotary_dim:2] = first, second
        return out.reshape(x.shape)

    return [rotate(query)] + ([] if key is None else [rotate(key)])


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), (g.float() - w.float()).abs().max()


CASES = list(
    itertools.product(
        DTYPES,
        (True, False),  # neox
        (False, True),  # partial
        (True, False),  # key
        (False, True),  # 3-D
    )
)


@pytest.mark.parametrize(("dtype", "neox", "partial", "has_key", "three_d"), CASES)
def test_native_is_vllms_forward_native(dtype, neox, partial, has_key, three_d):
    args = rotary_embedding.sample_inputs(
        dtype=dtype, num_tokens=5, hidden_size=16, num_heads=3, num_kv_heads=2,
        is_neox_style=neox, partial=partial, has_key=has_key, three_d=three_d,
    )  # fmt: skip
    got = rotary_embedding(*args)
    _same(got, vllm_reference(*args))
    assert len(got) == (2 if has_key else 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("neox", [True, False])
def test_fp32_cache_is_the_cache_rounded_to_the_query_dtype(dtype, neox):
    args = list(
        rotary_embedding.sample_inputs(
            dtype=dtype, num_tokens=6, cache_dtype=torch.float32, is_neox_style=neox
        )
    )
    assert args[4].dtype == torch.float32
    got = rotary_embedding(*args)
    _same(got, vllm_reference(*args))
    args[4] = args[4].to(dtype)
    _same(got, rotary_embedding(*args))


def test_rotation_is_computed_in_the_model_dtype():
    """Three roundings in bf16: not the fp32 rotation rounded once (which FlashInfer's
    and vLLM's C++ CPU kernels compute), somewhere on random input."""
    args = rotary_embedding.sample_inputs(dtype=torch.bfloat16, num_tokens=64)
    got = rotary_embedding(*args)
    fp32 = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    fp32[4] = args[4].float()
    once = [t.to(torch.bfloat16) for t in rotary_embedding(*fp32)]
    assert not all(torch.equal(g, o) for g, o in zip(got, once, strict=True))
    for g, o, x in zip(got, once, args[1:3], strict=True):
        # each product rounds (half a bf16 ulp of |x|) before the sum: an absolute error
        # near cancellation, not a relative one
        torch.testing.assert_close(g, o, atol=2**-8 * float(x.abs().max()), rtol=2**-7)


def _hf_cos_sin(cache, positions, rotary_dim, dtype):
    """Hugging Face's cos/sin [1, seq, rotary_dim] for these positions: each frequency twice."""
    half = rotary_dim // 2
    rows = cache[positions]
    cos = torch.cat((rows[:, :half], rows[:, :half]), dim=-1)
    sin = torch.cat((rows[:, half:], rows[:, half:]), dim=-1)
    return cos[None].to(dtype), sin[None].to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("partial", [False, True])
def test_neox_native_is_transformers_apply_rotary_pos_emb(dtype, partial):
    """vLLM form (neox) == Hugging Face's function on the same values: rotate_half's
    negation is exact, so both orders round the same way."""
    positions, q, k, head_size, cache, neox, rd = rotary_embedding.sample_inputs(
        dtype=dtype, num_tokens=7, hidden_size=32, three_d=True, partial=partial
    )
    cos, sin = _hf_cos_sin(cache, positions, rd, dtype)
    hf = phi3_rope if partial else llama_rope
    want = hf(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    got = rotary_embedding(positions, q, k, head_size, cache, neox, rd)
    _same([g.transpose(0, 1)[None] for g in got], list(want))


@pytest.mark.parametrize(
    ("dtype", "cos_dtype"),
    [(d, d) for d in DTYPES] + [(torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
)
@pytest.mark.parametrize("bshd", [False, True])
def test_rotary_pos_emb_is_transformers(dtype, cos_dtype, bshd):
    """Type promotion included: an fp32 cos with a bf16 q gives an fp32 result, as in
    Hugging Face."""
    q, k, cos, sin, unsqueeze_dim = rotary_pos_emb.sample_inputs(
        dtype=dtype, num_tokens=5, batch=2, cos_dtype=cos_dtype, bshd=bshd
    )
    got = rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)
    _same(list(got), list(llama_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)))
    assert got[0].dtype == torch.promote_types(dtype, cos_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_rotary_pos_emb_is_phi3s(dtype):
    q, k, cos, sin, u = rotary_pos_emb.sample_inputs(dtype=dtype, hidden_size=48, partial=True)
    assert cos.shape[-1] == 24
    _same(list(rotary_pos_emb(q, k, cos, sin, u)), list(phi3_rope(q, k, cos, sin, u)))
    torch.testing.assert_close(rotary_pos_emb(q, k, cos, sin, u)[0][..., 24:], q[..., 24:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_bias", [0.0, 1.0])
@pytest.mark.parametrize("three_d", [False, True])
def test_qk_norm_rope_is_rms_norm_then_rotary(dtype, weight_bias, three_d):
    args = qk_norm_rope.sample_inputs(
        dtype=dtype, num_tokens=5, hidden_size=16, num_heads=3, three_d=three_d,
        weight_bias=weight_bias, partial=three_d, is_neox_style=not three_d,
    )  # fmt: skip
    positions, q, k, qw, kw, eps, head_size, cache, neox, rd, bias = args
    # the natives (rms_norm's cpu kernel is only within tolerance in fp32)
    qn = rms_norm.native(q.unflatten(-1, (-1, head_size)), qw, eps, None, bias).reshape(q.shape)
    kn = rms_norm.native(k.unflatten(-1, (-1, head_size)), kw, eps, None, bias).reshape(k.shape)
    want = rotary_embedding.native(positions, qn, kn, head_size, cache, neox, rd)
    _same(list(qk_norm_rope(*args)), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("bshd", "weight_dtype"), [(False, None), (True, torch.float32)])
def test_qk_norm_rotary_pos_emb_is_rms_norm_then_rotary_pos_emb(dtype, bshd, weight_dtype):
    args = qk_norm_rotary_pos_emb.sample_inputs(
        dtype=dtype, bshd=bshd, weight_dtype=weight_dtype, weight_bias=1.0 if bshd else 0.0
    )
    q, k, qw, kw, eps, cos, sin, u, bias = args
    qn, kn = rms_norm.native(q, qw, eps, None, bias), rms_norm.native(k, kw, eps, None, bias)
    want = rotary_pos_emb.native(qn, kn, cos, sin, u)
    _same(list(qk_norm_rotary_pos_emb(*args)), list(want))


def test_qwen3_order_norm_before_transpose_is_the_same():
    """Qwen3 norms q in [b, s, h, d] then transposes; the fused HF op on [b, s, h, d]
    with unsqueeze_dim=2, transposed after, is bit-identical (RoPE is per row)."""
    q, k, qw, kw, eps, cos, sin, _, _ = qk_norm_rotary_pos_emb.sample_inputs(
        dtype=torch.bfloat16, bshd=True, num_tokens=6
    )
    hf = llama_rope(
        rms_norm.native(q, qw, eps).transpose(1, 2),
        rms_norm.native(k, kw, eps).transpose(1, 2),
        cos,
        sin,
    )
    fused = qk_norm_rotary_pos_emb(q, k, qw, kw, eps, cos, sin, 2)
    _same([t.transpose(1, 2) for t in fused], list(hf))


def test_inputs_are_not_modified_and_pass_through_columns_are_copied():
    args = rotary_embedding.sample_inputs(dtype=torch.bfloat16, partial=True, three_d=True)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    q_out, _ = rotary_embedding(*args)
    for a, b in zip(args, before, strict=True):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
    assert torch.equal(q_out[..., 32:], args[1][..., 32:])
    assert q_out.data_ptr() != args[1].data_ptr()


def test_fused_qkv_column_views():
    """q and k as column views of one [tokens, (nq + 2 nk) * head_size] buffer."""
    tokens, hs = 5, 16
    qkv = torch.randn(tokens, 4 * hs).to(torch.bfloat16)
    q, k = qkv[:, : 2 * hs], qkv[:, 2 * hs : 3 * hs]
    cache = cos_sin_cache(32, hs, dtype=torch.bfloat16)
    positions = torch.tensor([0, 3, 31, 7, 7])
    got = rotary_embedding(positions, q, k, hs, cache, True)
    _same(got, vllm_reference(positions, q.clone(), k.clone(), hs, cache, True, hs))


@pytest.mark.parametrize("op", [rotary_embedding, rotary_pos_emb, qk_norm_rope])
def test_zero_tokens(op):
    args = op.sample_inputs(dtype=torch.bfloat16, num_tokens=0)
    out = op(*args)
    assert all(t.numel() == 0 for t in out)


def test_positions_int32_and_rotary_dim_none():
    positions, q, k, hs, cache, neox, rd = rotary_embedding.sample_inputs(dtype=torch.float16)
    want = rotary_embedding(positions, q, k, hs, cache, neox, rd)
    _same(rotary_embedding(positions.int(), q, k, hs, cache, neox), want)


# --------------------------------------------------------------------------- bad input


def _vllm_args(**kw):
    return list(rotary_embedding.sample_inputs(dtype=torch.float32, num_tokens=4, **kw))


def _bad(index, value):
    def change(args):
        args[index] = value(args) if callable(value) else value

    return change


def _cache(value):
    """Replace the cache, rotary_dim None (taken from the cache)."""

    def change(args):
        args[4], args[6] = value(args), None

    return change


BAD_ROTARY = {
    "2-D positions": (_bad(0, lambda a: a[0][:, None]), "positions must be a 1-D integer"),
    "float positions": (_bad(0, lambda a: a[0].float()), "positions must be int32 or int64"),
    "bool positions": (_bad(0, lambda a: a[0] > 0), "positions must be int32 or int64"),
    "uint8 positions": (_bad(0, lambda a: a[0].to(torch.uint8)), "positions must be int32 or"),
    "short positions": (_bad(0, lambda a: a[0][:3]), "positions has 3 entries but query has 4"),
    "negative position": (_bad(0, torch.tensor([0, 1, -1, 2])), r"positions must be in \[0, 16\)"),
    "position past the cache": (
        _bad(0, torch.tensor([0, 16, 1, 2])),
        r"positions must be in \[0, 16\).*got 16",
    ),
    "integer query": (_bad(1, lambda a: a[1].int()), "query must be a floating-point"),
    "1-D query": (_bad(1, lambda a: a[1][0]), "query must be 2-D"),
    "head_size not dividing": (_bad(3, 48), r"head_size \(48\) must divide query's last dim"),
    "head_size zero": (_bad(3, 0), "head_size must be a positive int"),
    "head_size float": (_bad(3, 64.0), "head_size must be a positive int"),
    "3-D query of another head size": (
        _bad(1, lambda a: a[1].view(4, 4, 32)),
        "3-D query .* last dim head_size",
    ),
    "key of another dtype": (_bad(2, lambda a: a[2].double()), "key must have query's dtype"),
    "key with other tokens": (_bad(2, lambda a: a[2][:3]), "key has 3 tokens but query has 4"),
    "key not dividing": (_bad(2, lambda a: a[2][:, :40]), "must divide key's last dim"),
    "3-D key with 2-D query": (_bad(2, lambda a: a[2].view(4, 1, 64)), "key must have query's"),
    "1-D cache": (_cache(lambda a: a[4][0]), "cos_sin_cache must be a 2-D floating-point"),
    "integer cache": (_cache(lambda a: a[4].int()), "cos_sin_cache must be a 2-D floating-point"),
    "odd rotary_dim": (_cache(lambda a: a[4][:, :63]), "rotary_dim .* must be even"),
    "rotary_dim wider than the head": (
        _cache(lambda a: torch.cat((a[4], a[4]), -1)),
        r"at most head_size \(64\), got 128",
    ),
    "rotary_dim not the cache's": (_bad(6, 32), r"rotary_dim must be None or cos_sin_cache's"),
    "cache on meta": (_cache(lambda a: a[4].to("meta")), "cos_sin_cache is on meta"),
}


@pytest.mark.parametrize("case", list(BAD_ROTARY))
@pytest.mark.parametrize("op", [rotary_embedding, qk_norm_rope])
def test_bad_input_is_a_value_error_naming_the_argument(op, case):
    change, message = BAD_ROTARY[case]
    args = _vllm_args()
    change(args)
    if op is qk_norm_rope:  # same parameters, norm weights between key and head_size
        positions, q, k, hs, cache, neox, rd = args
        w = torch.ones(64)
        args = [positions, q, k, w, w, 1e-6, hs, cache, neox, rd]
    with pytest.raises(ValueError, match=message):
        op(*args)
    with pytest.raises(ValueError, match=message):
        op.native(*args)


def test_out_of_range_positions_are_checked_before_any_read():
    """The check is the native's first step; nothing is gathered (index_select would
    raise its own IndexError otherwise)."""
    args = _vllm_args()
    args[0] = torch.tensor([0, 1, 2, 10**9])
    with pytest.raises(ValueError, match=r"build a longer cache or clamp the positions"):
        rotary_embedding(*args)


@pytest.mark.parametrize(
    ("which", "value", "message"),
    [
        ("q_weight", torch.ones(63), r"q_weight must have shape \[head_size\] = \[64\]"),
        ("k_weight", torch.ones(64, dtype=torch.int32), "k_weight must be floating point"),
        ("k_weight", torch.ones(64, device="meta"), "k_weight is on meta"),
    ],
)
def test_qk_norm_weights(which, value, message):
    args = list(qk_norm_rope.sample_inputs(dtype=torch.float32, hidden_size=64))
    args[3 if which == "q_weight" else 4] = value
    with pytest.raises(ValueError, match=message):
        qk_norm_rope(*args)
    hf = list(qk_norm_rotary_pos_emb.sample_inputs(dtype=torch.float32, hidden_size=64))
    hf[2 if which == "q_weight" else 3] = value
    with pytest.raises(ValueError, match=message):
        qk_norm_rotary_pos_emb(*hf)


def _hf_args():
    return list(rotary_pos_emb.sample_inputs(dtype=torch.float32, hidden_size=16))


BAD_HF = {
    "integer q": (_bad(0, lambda a: a[0].int()), "q must be a floating-point tensor"),
    "k on meta": (_bad(1, lambda a: a[1].to("meta")), "k is on meta but q is on cpu"),
    "cos and sin shapes": (_bad(3, lambda a: a[3][..., :8]), "cos and sin must have the same"),
    "k head_dim": (_bad(1, lambda a: a[1][..., :8]), r"k's head_dim \(8\) must equal q's"),
    "odd rotary dim": (
        lambda a: a.__setitem__(slice(2, 4), [a[2][..., :7], a[3][..., :7]]),
        "must be even and at most q's head_dim",
    ),
    "cos wider than the head": (
        lambda a: a.__setitem__(slice(2, 4), [a[2].repeat(1, 1, 2), a[3].repeat(1, 1, 2)]),
        r"at most q's head_dim \(16\), got 32",
    ),
    "unsqueeze_dim out of range": (_bad(4, 5), r"unsqueeze_dim must be an int in \[-4, 3\]"),
    "unsqueeze_dim not broadcasting": (_bad(4, 3), r"cos.unsqueeze\(3\) .* does not broadcast"),
    "seq mismatch": (
        lambda a: a.__setitem__(slice(2, 4), [a[2][:, :3], a[3][:, :3]]),
        "does not broadcast to q's",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HF))
def test_hf_bad_input(case):
    change, message = BAD_HF[case]
    args = _hf_args()
    change(args)
    with pytest.raises(ValueError, match=message):
        rotary_pos_emb(*args)
    q, k, cos, sin, u = args
    w = torch.ones(q.shape[-1])
    with pytest.raises(ValueError, match=message):
        qk_norm_rotary_pos_emb(q, k, w, w, 1e-6, cos, sin, u)


def test_fake_tensors_skip_the_range_check_and_keep_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _vllm_args(has_key=False)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out = rotary_embedding.torch_op(*fake)
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == args[1].shape
