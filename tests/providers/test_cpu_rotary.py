"""The cpu provider's rotary kernels (rotary.cpp) against the native functions.

Rotation: bit-identical to native in bf16, fp16 and fp32 (torch.equal, NaN-aware)
for neox and GPT-J, partial rotary, key=None, 2-D/3-D, strided views of one qkv
buffer, fp32 caches with 16-bit queries, any token count. The q/k-norm ops: within
the op's tolerance (rms_norm's summation order). In place: maybe_inplace writes
query/key themselves and nothing else; the functional op mutates nothing. Bad
input: the native's ValueError, before any memory is touched.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from opir.ops import qk_norm_rope, qk_norm_rotary_pos_emb, rotary_embedding, rotary_pos_emb
from opir.providers.cpu import rotary_impls, rotary_kernels

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _ids(v):
    return str(v).removeprefix("torch.")


@pytest.fixture(autouse=True)
def _cpu_first():
    """Every op on cpu (listed explicitly: a failed build raises instead of falling back)."""
    ops = (rotary_embedding, qk_norm_rope, rotary_pos_emb, qk_norm_rotary_pos_emb)
    with (
        ops[0].set_priority(["cpu", "native"]),
        ops[1].set_priority(["cpu", "native"]),
        ops[2].set_priority(["cpu", "native"]),
        ops[3].set_priority(["cpu", "native"]),
    ):
        yield


def assert_same_bits(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        same = (g == w) | (g.isnan() & w.isnan())
        if not bool(same.all()):
            i = (~same).nonzero()[0].tolist()
            raise AssertionError(
                f"{int((~same).sum())} of {g.numel()} elements differ, first at {i}: "
                f"{g[tuple(i)].item()!r} vs native {w[tuple(i)].item()!r}"
            )


def assert_close(op, got, want) -> None:
    tol = op.tolerance(want[0].dtype)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=tol.atol, rtol=tol.rtol)


def _clones(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _rope_args(dtype, **kw):
    return list(
        rotary_embedding.complete_args(tuple(rotary_embedding.sample_inputs(dtype=dtype, **kw)))
    )


def _uses_cpu(op, args) -> None:
    assert op.dispatch(*args).provider == "cpu"


# ----------------------------------------------------------------------- rotary_embedding


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("has_key", [True, False], ids=["key", "nokey"])
@pytest.mark.parametrize("three_d", [False, True], ids=["2d", "3d"])
def test_rotary_embedding_bit_identical(dtype, neox, partial, has_key, three_d):
    for tokens, head_size, cache_dtype in ((1, 128, None), (7, 80, torch.float32), (3, 64, None)):
        args = _rope_args(
            dtype, num_tokens=tokens, hidden_size=head_size, num_heads=3, num_kv_heads=2,
            is_neox_style=neox, partial=partial, has_key=has_key, three_d=three_d,
            cache_dtype=cache_dtype,
        )  # fmt: skip
        _uses_cpu(rotary_embedding, args)
        want = rotary_embedding.native(*args)
        before = _clones(args)
        assert_same_bits(rotary_embedding(*args), want)  # functional: inputs unchanged
        for a, b in zip(args, before, strict=True):
            assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
        donated = _clones(args)
        got = rotary_embedding.maybe_inplace(*donated)
        assert_same_bits(got, want)
        assert got[0] is donated[1] and (not has_key or got[1] is donated[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize(
    "cache_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=_ids
)
def test_cache_dtype_cast_to_query_dtype(dtype, cache_dtype):
    """Any float cache: cast to the query's dtype first, as native casts it."""
    args = _rope_args(dtype, num_tokens=5, hidden_size=64, cache_dtype=cache_dtype)
    _uses_cpu(rotary_embedding, args)
    assert_same_bits(rotary_embedding(*args), rotary_embedding.native(*args))


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("positions_dtype", [torch.int32, torch.int64], ids=_ids)
def test_many_tokens_threads_and_positions_dtype(neox, positions_dtype):
    """Enough rows for at::parallel_for to split them; int32 positions."""
    args = _rope_args(
        torch.bfloat16, num_tokens=301, hidden_size=128, num_heads=4, num_kv_heads=2,
        is_neox_style=neox, max_position=512,
    )  # fmt: skip
    args[0] = args[0].to(positions_dtype)
    assert_same_bits(rotary_embedding(*args), rotary_embedding.native(*args))


def test_zero_tokens():
    args = _rope_args(torch.bfloat16, num_tokens=0, hidden_size=64)
    got = rotary_embedding.maybe_inplace(*args)
    assert [g.shape for g in got] == [args[1].shape, args[2].shape]


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
def test_tiny_and_special_values_bf16(neox):
    """Subnormal products and sums take the exact rounding (the AVX512-BF16 shortcut
    flushes them); infinities and NaN as native."""
    args = _rope_args(
        torch.bfloat16, num_tokens=6, hidden_size=128, num_heads=3, is_neox_style=neox
    )
    q = args[1]
    q[0] *= 1e-36
    q[1, :10] = 1e-39
    q[2] *= 1e30
    q[3, 5] = float("inf")
    q[4, 7] = float("nan")
    q[5] *= 3e-20
    cache = args[4].clone()
    cache[:, 3] = 1e-20
    cache[:, 70] = 1e-30
    args[4] = cache
    assert_same_bits(rotary_embedding(*args), rotary_embedding.native(*args))


@pytest.mark.parametrize("three_d", [False, True], ids=["2d", "3d"])
def test_qkv_views_written_in_place_rest_untouched(three_d):
    """query/key as column views of one qkv buffer (token stride != width): written in
    place, v and everything else in the buffer left exactly as it was."""
    tokens, hs, nq, nk = 5, 64, 4, 2
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs + 3).to(torch.bfloat16)  # + padding columns
    if three_d:
        heads = qkv[:, : (nq + 2 * nk) * hs].view(tokens, nq + 2 * nk, hs)
        query, key = heads[:, :nq], heads[:, nq : nq + nk]
    else:
        query, key = qkv[:, : nq * hs], qkv[:, nq * hs : (nq + nk) * hs]
    from opir.ops.rotary import cos_sin_cache

    cache = cos_sin_cache(32, hs)
    positions = torch.randint(0, 32, (tokens,))
    want = rotary_embedding.native(positions, query.clone(), key.clone(), hs, cache, True)
    before = qkv.clone()
    got = rotary_embedding.maybe_inplace(positions, query, key, hs, cache, True)
    assert got[0] is query and got[1] is key
    assert_same_bits(got, want)
    assert_same_bits([query, key], want)
    rest = torch.ones_like(qkv, dtype=torch.bool)
    rest[:, : (nq + nk) * hs] = False
    assert torch.equal(qkv[rest], before[rest])


def test_aliasing_query_and_key_runs_on_copies():
    """query and key one tensor: in place would rotate twice; the kernel runs on
    private copies (and returns them) and gives native's values."""
    args = _rope_args(torch.bfloat16, num_tokens=4, hidden_size=64, num_heads=2, num_kv_heads=2)
    args[2] = args[1]
    want = rotary_embedding.native(*args)
    shared = args[1].clone()
    got = rotary_embedding.maybe_inplace(args[0], shared, shared, *args[3:])
    assert_same_bits(got, want)
    # the cache a view of query's memory: not written while it is read
    buf = torch.randn(40, 64).to(torch.bfloat16)
    query, cache = buf[:4], buf[8:40]
    positions = torch.arange(4)
    want = rotary_embedding.native(positions, query.clone(), None, 64, cache.clone(), True)
    assert_same_bits(rotary_embedding.maybe_inplace(positions, query, None, 64, cache, True), want)


def test_strided_last_dim_written_back():
    base = torch.randn(3, 2 * 128).to(torch.float16)
    query = base[:, ::2]
    positions = torch.tensor([0, 5, 2])
    from opir.ops.rotary import cos_sin_cache

    cache = cos_sin_cache(8, 64, dtype=torch.float32)
    want = rotary_embedding.native(positions, query.clone(), None, 64, cache, False)
    odd = base[:, 1::2].clone()
    got = rotary_embedding.maybe_inplace(positions, query, None, 64, cache, False)
    assert_same_bits(got, want)
    assert got[0] is query and torch.equal(base[:, 1::2], odd)


def _native_error(op, args):
    with pytest.raises(ValueError) as native:
        op.native(*args)
    return str(native.value)


def _bad_rotary_cases():
    def args(**kw):
        return _rope_args(torch.bfloat16, num_tokens=3, hidden_size=64, **kw)

    cases = {}
    a = args()
    a[0] = a[0][None]
    cases["positions 2-D"] = a
    a = args()
    a[0] = a[0].float()
    cases["positions float"] = a
    a = args()
    a[3] = 48
    cases["head_size not dividing"] = a
    a = args()
    a[6] = 32
    cases["rotary_dim not the cache's"] = a
    a = args()
    a[4] = a[4][:, :63]
    a[6] = None
    cases["odd rotary_dim"] = a
    a = args()
    a[2] = a[2].float()
    cases["key dtype"] = a
    a = args()
    a[2] = a[2][:2]
    cases["key tokens"] = a
    a = args()
    a[0] = a[0].clone()
    a[0][1] = -1
    cases["negative position"] = a
    a = args()
    a[0] = a[0].clone()
    a[0][2] = a[4].shape[0]
    cases["position == max_position"] = a
    a = args()
    a[0] = a[0].clone()
    a[0][0] = 2**40
    cases["huge position"] = a
    a = args(three_d=True)
    a[3] = 32
    cases["3-D head_size"] = a
    return cases


@pytest.mark.parametrize("case", list(_bad_rotary_cases()))
def test_bad_inputs_raise_natives_error_untouched(case):
    args = _bad_rotary_cases()[case]
    message = _native_error(rotary_embedding, args)
    donated = _clones(args)
    with pytest.raises(ValueError) as got:
        rotary_embedding.maybe_inplace(*donated)
    assert str(got.value) == message
    for a, b in zip(donated, args, strict=True):  # nothing written
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
    with pytest.raises(ValueError, match=r"positions|head_size|rotary_dim|key"):
        rotary_kernels.extension().rotary_embedding(*_clones(args))


def test_predicate_rejects_what_the_kernel_cannot_do():
    args = _rope_args(torch.float64, num_tokens=2, hidden_size=32)
    assert not rotary_impls.supports_rotary_embedding(*args)
    assert rotary_embedding.dispatch(*args).provider == "native"


# ----------------------------------------------------------------------- qk_norm_rope


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize(
    ("weight_dtype", "weight_bias"),
    [(None, 0.0), (torch.float32, 0.0), (None, 1.0)],
    ids=["same", "fp32w", "bias"],
)
def test_qk_norm_rope_within_tolerance(dtype, neox, weight_dtype, weight_bias):
    for tokens, partial, three_d in ((1, False, False), (5, True, True)):
        args = qk_norm_rope.complete_args(
            tuple(
                qk_norm_rope.sample_inputs(
                    dtype=dtype,
                    num_tokens=tokens,
                    hidden_size=128,
                    num_heads=3,
                    num_kv_heads=2,
                    is_neox_style=neox,
                    partial=partial,
                    three_d=three_d,
                    weight_dtype=weight_dtype,
                    weight_bias=weight_bias,
                    cache_dtype=torch.float32,
                )
            )
        )
        _uses_cpu(qk_norm_rope, args)
        want = qk_norm_rope.native(*args)
        before = _clones(args)
        assert_close(qk_norm_rope, qk_norm_rope(*args), want)
        assert all(
            not isinstance(a, torch.Tensor) or torch.equal(a, b)
            for a, b in zip(args, before, strict=True)
        )
        donated = _clones(args)
        got = qk_norm_rope.maybe_inplace(*donated)
        assert got[0] is donated[1] and got[1] is donated[2]
        assert_close(qk_norm_rope, got, want)


def test_qk_norm_rope_mixed_weight_dtypes_and_bad_weight():
    args = list(
        qk_norm_rope.complete_args(
            tuple(qk_norm_rope.sample_inputs(dtype=torch.bfloat16, num_tokens=3, hidden_size=64))
        )
    )
    args[4] = args[4].float()  # q weight bf16 (rounds in bf16), k weight fp32 (rounds once)
    assert_close(qk_norm_rope, qk_norm_rope(*args), qk_norm_rope.native(*args))
    args[3] = args[3][:32]
    message = _native_error(qk_norm_rope, args)
    with pytest.raises(ValueError) as got:
        qk_norm_rope.maybe_inplace(*_clones(args))
    assert str(got.value) == message


# ----------------------------------------------------------------------- Hugging Face form


def _hf_args(op, dtype, **kw):
    return list(op.sample_inputs(dtype=dtype, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("bshd", [False, True], ids=["bhsd", "bshd"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rotary_pos_emb_bit_identical(dtype, partial, bshd, batch):
    args = _hf_args(
        rotary_pos_emb, dtype, num_tokens=5, hidden_size=64, batch=batch, partial=partial,
        bshd=bshd,
    )  # fmt: skip
    if not bshd:  # as Hugging Face produces q/k: [b, s, h, d] projections transposed
        args[0] = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    _uses_cpu(rotary_pos_emb, args)
    assert_same_bits(rotary_pos_emb(*args), rotary_pos_emb.native(*args))
    if batch == 2:  # one cos/sin for every batch row (broadcast)
        args[2], args[3] = args[2][:1], args[3][:1]
        assert_same_bits(rotary_pos_emb(*args), rotary_pos_emb.native(*args))


def test_rotary_pos_emb_promotion_falls_to_native():
    args = _hf_args(rotary_pos_emb, torch.bfloat16, cos_dtype=torch.float32)
    assert rotary_pos_emb.dispatch(*args).provider == "native"


def test_rotary_pos_emb_bad_input_natives_error():
    args = _hf_args(rotary_pos_emb, torch.bfloat16, num_tokens=4, hidden_size=32)
    args[2] = args[2][..., :30]
    args[3] = args[3][..., :30]
    args[2] = torch.cat([args[2], args[2][..., :3]], dim=-1)  # odd rotary dim
    args[3] = torch.cat([args[3], args[3][..., :3]], dim=-1)
    message = _native_error(rotary_pos_emb, args)
    with pytest.raises(ValueError) as got:
        rotary_pos_emb(*args)
    assert str(got.value) == message


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("bshd", [False, True], ids=["bhsd", "bshd"])
def test_qk_norm_rotary_pos_emb_within_tolerance(dtype, bshd):
    for partial, weight_bias in ((False, 0.0), (True, 1.0)):
        args = _hf_args(
            qk_norm_rotary_pos_emb, dtype, num_tokens=5, hidden_size=64, batch=2,
            partial=partial, bshd=bshd, weight_bias=weight_bias,
        )  # fmt: skip
        _uses_cpu(qk_norm_rotary_pos_emb, args)
        assert_close(
            qk_norm_rotary_pos_emb,
            qk_norm_rotary_pos_emb(*args),
            qk_norm_rotary_pos_emb.native(*args),
        )


# ----------------------------------------------------------------------- tracing


@pytest.mark.parametrize("mode", ["real", "fake"])
def test_traceable_impls_record_the_custom_ops(mode):
    """The traceable impls (what lowering records) are single opir_cpu nodes: the
    in-place kernel on the functional op's clones, and the Hugging Face kernel."""
    args = _rope_args(torch.bfloat16, num_tokens=3, hidden_size=64)
    impl = rotary_embedding.impls["cpu"].fn

    def rope(*a):
        q, k = a[1].clone(), a[2].clone()
        return impl(a[0], q, k, *a[3:])

    graph = make_fx(rope, tracing_mode=mode)(*args)
    assert "torch.ops.opir_cpu.rotary_embedding_.default" in graph.code
    assert_same_bits(list(graph(*args)), rotary_embedding.native(*args))
    hf = _hf_args(rotary_pos_emb, torch.bfloat16)
    graph = make_fx(rotary_pos_emb.impls["cpu"].fn, tracing_mode=mode)(*hf)
    assert "torch.ops.opir_cpu.rotary_pos_emb.default" in graph.code
    assert_same_bits(graph(*hf), rotary_pos_emb.native(*hf))


def test_traced_in_place_op_refuses_overlap():
    args = _rope_args(torch.bfloat16, num_tokens=3, hidden_size=64, num_kv_heads=2)
    shared = args[1].clone()
    with pytest.raises(ValueError, match="cannot be written in place"):
        torch.ops.opir_cpu.rotary_embedding_(args[0], shared, shared, *args[3:])
