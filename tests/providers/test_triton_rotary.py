"""The triton provider's rotary kernels against native, op by op.

Held to the ops' contract (``opir.ops.rotary``): ``rotary_embedding`` and
``rotary_pos_emb`` bit-identical to the native in bf16 and fp16 (and in fp32 in
the interpreter, whose numpy arithmetic has no FMA; the fp32 tolerance on a
GPU); the q/k-norm ops within the op's tolerance (the rms's fp32 summation order
differs from torch's, as for ``rms_norm``). Runs where the kernels can run; on a
plain CPU run the one test below runs this file again with ``TRITON_INTERPRET=1``.
Shapes stay tiny: the interpreter runs one program at a time in numpy. GPU-only
checks (CUDA graphs, the sync-free out-of-range path on a device) are in
test_triton_rotary_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import run_in_interpreter

import opir
from opir.ops import rotary as R
from opir.providers import triton as provider

RUN_HERE = provider.SUPPORTED
DEVICE = "cpu" if provider.INTERPRET else "cuda"
OPS = R.OPS

if not RUN_HERE:

    def test_provider_says_why_it_is_unsupported():
        for op in OPS:
            assert not op.impls["triton"].supported
            assert "triton" not in op.get_priority()

    @pytest.mark.slow
    def test_kernels_in_the_triton_interpreter():
        """Run this file again with TRITON_INTERPRET=1 (the real kernels, on CPU)."""
        run_in_interpreter(__file__, timeout=600)

else:
    from conformance import clone_args

    DTYPES = [torch.float32, torch.bfloat16, torch.float16]
    EXACT = (R.rotary_embedding, R.rotary_pos_emb)

    def _ids(v):
        return getattr(v, "name", None) or str(v).removeprefix("torch.")

    def _run(op, args, donate=False):
        call = op.maybe_inplace if donate else op
        with op.set_priority(["triton"]), opir.strict():
            return call(*args)

    def _exact(op, dtype) -> bool:
        """Where bit-identity is asserted: the plain rotations in 16-bit everywhere and in
        fp32 in the interpreter (a GPU may contract fp32 ``a*b - c*d`` into an FMA). The
        q/k-norm ops sum the squares in another order than torch (as the triton
        ``rms_norm`` does), which moves a few 16-bit results by an ulp (5 in 81920 fp16
        elements measured): the op's tolerance."""
        if op in EXACT:
            return dtype != torch.float32 or provider.INTERPRET
        return False

    def _same(got, want, op, dtype):
        assert got.shape == want.shape and got.dtype == want.dtype
        if not _exact(op, dtype):
            tol = op.tolerance(dtype)
            torch.testing.assert_close(got, want, atol=tol.atol, rtol=tol.rtol)
            return
        differ = (got != want) & ~(got.isnan() & want.isnan())
        assert not differ.any(), (
            f"{int(differ.sum())} of {got.numel()} elements differ from native: "
            f"got {got[differ][:4].tolist()}, native {want[differ][:4].tolist()}"
        )

    def _check(op, args, donate=False):
        """Exactly the triton impl vs native; the functional overload mutates nothing,
        ``maybe_inplace`` writes into the activations and returns them."""
        want = op.native(*clone_args(args))
        before = clone_args(args)
        got = _run(op, args, donate)
        got = list(got)
        assert len(got) == len(want)
        dtype = want[0].dtype
        for g, w in zip(got, want, strict=True):
            _same(g, w, op, dtype)
        acts = [args[i] for i in op.activation_positions if args[i] is not None]
        if donate:
            for g, a in zip(got, acts, strict=True):
                assert g is a, "maybe_inplace must return the activations it wrote"
        else:
            for a, b in zip(args, before, strict=True):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), "the functional overload mutated an input"
        return got

    def _sample(op, **kw):
        return op.sample_inputs(device=DEVICE, **kw)

    # --- vLLM form --------------------------------------------------------------------

    VLLM = [
        {},
        {"is_neox_style": False},
        {"partial": True},
        {"partial": True, "is_neox_style": False},
        {"three_d": True},
        {"cache_dtype": torch.float32},
        {"has_key": False},
    ]

    def _vid(kw):
        parts = [f"{k}={getattr(v, 'name', None) or v}" for k, v in kw.items()]
        return "-".join(parts) or "base"

    @pytest.mark.parametrize("kw", VLLM, ids=_vid)
    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize("donate", [False, True], ids=["functional", "maybe_inplace"])
    def test_rotary_embedding(kw, dtype, donate):
        args = _sample(R.rotary_embedding, dtype=dtype, num_tokens=5, hidden_size=16, **kw)
        _check(R.rotary_embedding, args, donate)

    @pytest.mark.parametrize(
        "kw",
        [
            {},
            {"is_neox_style": False, "partial": True},
            {"three_d": True, "cache_dtype": torch.float32},
            {"weight_dtype": torch.float32},
            {"weight_bias": 1.0, "partial": True},
        ],
        ids=_vid,
    )
    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize("donate", [False, True], ids=["functional", "maybe_inplace"])
    def test_qk_norm_rope(kw, dtype, donate):
        args = _sample(R.qk_norm_rope, dtype=dtype, num_tokens=5, hidden_size=16, **kw)
        _check(R.qk_norm_rope, args, donate)

    def _caches():
        """bf16 query with fp16 and fp32 caches, fp16 query with a bf16 cache."""
        return [
            (torch.bfloat16, torch.float16),
            (torch.bfloat16, torch.float32),
            (torch.float16, torch.bfloat16),
            (torch.float32, torch.bfloat16),
        ]

    @pytest.mark.parametrize(("dtype", "cache_dtype"), _caches(), ids=str)
    def test_cache_dtype_rounds_to_query_dtype_first(dtype, cache_dtype):
        args = _sample(R.rotary_embedding, dtype=dtype, cache_dtype=cache_dtype, num_tokens=6,
                       hidden_size=32, num_heads=2, num_kv_heads=2)  # fmt: skip
        _check(R.rotary_embedding, args)

    def _qkv(dtype, tokens, nq, nk, hs, rd, neox):
        """Query and key as column views of one fused [tokens, (nq + 2 nk) * hs] buffer."""
        gen = torch.Generator().manual_seed(1)
        qkv = torch.randn(tokens, (nq + 2 * nk) * hs, generator=gen).to(DEVICE, dtype)
        query = qkv[:, : nq * hs]
        key = qkv[:, nq * hs : (nq + nk) * hs]
        positions = torch.randint(0, 40, (tokens,), generator=gen).to(DEVICE)
        cache = R.cos_sin_cache(40, rd, device=DEVICE)
        return qkv, (positions, query, key, hs, cache, neox, rd)

    @pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
    @pytest.mark.parametrize("rd", [16, 8], ids=["full", "partial"])
    def test_fused_qkv_column_views_in_place(neox, rd):
        """In place on strided column views: q and k's rotated columns change, their
        pass-through columns and v (the rest of the buffer) are left untouched."""
        qkv, args = _qkv(torch.bfloat16, 5, 3, 1, 16, rd, neox)
        assert not args[1].is_contiguous()
        expected = R.rotary_embedding.native(*clone_args(args))
        before = qkv.clone()
        got = _run(R.rotary_embedding, args, donate=True)
        assert got[0] is args[1] and got[1] is args[2]
        assert torch.equal(args[1], expected[0]) and torch.equal(args[2], expected[1])
        v_cols = slice(4 * 16, None)
        assert torch.equal(qkv[:, v_cols], before[:, v_cols])
        _check(R.rotary_embedding, args)  # and the functional overload on the same views

    def test_qk_norm_rope_on_column_views():
        qkv, args = _qkv(torch.float16, 4, 2, 2, 16, 8, True)
        gen = torch.Generator().manual_seed(2)
        w = [(1 + 0.1 * torch.randn(16, generator=gen)).to(DEVICE, torch.float16) for _ in "qk"]
        positions, query, key, hs, cache, neox, rd = args
        full = (positions, query, key, w[0], w[1], 1e-6, hs, cache, neox, rd, 0.0)
        _check(R.qk_norm_rope, full)
        before = qkv.clone()
        _check(R.qk_norm_rope, full, donate=True)
        assert torch.equal(qkv[:, 4 * 16 :], before[:, 4 * 16 :])  # v untouched

    def test_zero_tokens_and_many_heads():
        args = _sample(R.rotary_embedding, dtype=torch.bfloat16, num_tokens=0, hidden_size=16)
        assert [t.shape[0] for t in _run(R.rotary_embedding, args)] == [0, 0]
        # more heads than one program's block, GQA: 40 query heads, 8 key heads
        args = _sample(R.rotary_embedding, dtype=torch.bfloat16, num_tokens=2, hidden_size=128,
                       num_heads=40, num_kv_heads=8)  # fmt: skip
        _check(R.rotary_embedding, args)

    def test_out_of_range_positions_raise_the_natives_error():
        """On CPU tensors the launcher checks the range (no device sync to pay): the
        native's ValueError, before the kernel runs."""
        for bad in (16, -1):
            args = list(_sample(R.rotary_embedding, dtype=torch.bfloat16, max_position=16))
            args[0] = args[0].clone()
            args[0][1] = bad
            with pytest.raises(ValueError, match="positions must be in"):
                R.rotary_embedding.native(*args)
            if DEVICE == "cpu":
                with pytest.raises(ValueError, match="positions must be in"):
                    _run(R.rotary_embedding, tuple(args))

    def test_kernel_never_reads_outside_the_cache():
        """The kernel itself (no host check): an out-of-range token's rotated columns are
        NaN, its pass-through columns and every other token are the native's."""
        from opir.providers.triton import rotary

        args = list(_sample(R.rotary_embedding, dtype=torch.bfloat16, num_tokens=4,
                            hidden_size=16, partial=True, max_position=8))  # fmt: skip
        positions, query, key, hs, cache, neox, rd = args
        # the cache is a view into a larger buffer full of NaN-free sentinels: a read
        # past its rows would give finite (wrong) values instead of NaN
        bad = positions.clone()
        bad[1], bad[3] = 8, -3
        qo, ko = torch.empty_like(query), torch.empty_like(key)
        rotary._vllm(rotary.rope_kernel, bad, query, key, hs, cache, neox, rd, qo, ko, True)
        want = R.rotary_embedding.native(positions, query, key, hs, cache, neox, rd)
        for got, w, x in ((qo, want[0], query), (ko, want[1], key)):
            heads = got.view(4, -1, hs)
            assert heads[[1, 3], :, :rd].isnan().all()
            xs = x.view(4, -1, hs)
            assert torch.equal(heads[[1, 3], :, rd:], xs[[1, 3], :, rd:])
            assert torch.equal(got[[0, 2]], w[[0, 2]])

    # --- Hugging Face form --------------------------------------------------------------

    HF = [{}, {"bshd": True}, {"partial": True}, {"partial": True, "bshd": True}]

    @pytest.mark.parametrize("kw", HF, ids=_vid)
    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize("op", [R.rotary_pos_emb, R.qk_norm_rotary_pos_emb], ids=_ids)
    def test_hf_form(op, kw, dtype):
        args = _sample(op, dtype=dtype, num_tokens=5, hidden_size=16, batch=2, **kw)
        got = _check(op, args)
        want = op.native(*args)
        for g, w in zip(got, want, strict=True):
            assert g.stride() == w.stride(), "laid out like the native's result"

    def _hf_transposed(dtype, rd, batch_cos=True):
        """Hugging Face's attention: q_proj(x).view(b, s, h, d).transpose(1, 2)."""
        gen = torch.Generator().manual_seed(3)
        b, s, h, kh, d = 2, 5, 3, 1, 16
        q = torch.randn(b, s, h, d, generator=gen).to(DEVICE, dtype).transpose(1, 2)
        k = torch.randn(b, s, kh, d, generator=gen).to(DEVICE, dtype).transpose(1, 2)
        cos = torch.randn(b if batch_cos else 1, s, rd, generator=gen).to(DEVICE, dtype)
        sin = torch.randn(b if batch_cos else 1, s, rd, generator=gen).to(DEVICE, dtype)
        return q, k, cos, sin

    @pytest.mark.parametrize("rd", [16, 8], ids=["full", "partial"])
    @pytest.mark.parametrize("batch_cos", [True, False], ids=["cos_per_batch", "cos_broadcast"])
    def test_hf_transposed_views(rd, batch_cos):
        """The layout Hugging Face models pass (no copy), any cos (not only cat(f, f)),
        cos broadcast over the batch; outputs laid out like the native's."""
        q, k, cos, sin = _hf_transposed(torch.bfloat16, rd, batch_cos)
        assert not q.is_contiguous()
        got = _check(R.rotary_pos_emb, (q, k, cos, sin, 1))
        want = R.rotary_pos_emb.native(q, k, cos, sin, 1)
        assert [g.stride() for g in got] == [w.stride() for w in want]
        gen = torch.Generator().manual_seed(4)
        w = [(1 + 0.1 * torch.randn(16, generator=gen)).to(DEVICE, torch.bfloat16) for _ in "qk"]
        _check(R.qk_norm_rotary_pos_emb, (q, k, w[0], w[1], 1e-6, cos, sin, 1, 0.0))

    def test_hf_bshd_before_transpose():
        """The compile rule's form: q/k [b, s, h, d] with unsqueeze_dim=2 (and -2)."""
        q, k, cos, sin = _hf_transposed(torch.float16, 16)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # back to [b, s, h, d], contiguous
        for ud in (2, -2):
            _check(R.rotary_pos_emb, (q, k, cos, sin, ud))

    # --- bad input and predicates -----------------------------------------------------

    def _bad_vllm():
        def base(**kw):
            args = list(_sample(R.rotary_embedding, dtype=torch.bfloat16))
            for i, v in kw.items():
                args[int(i[1:])] = v(args) if callable(v) else v
            return tuple(args)

        return [
            (lambda: base(a3=48), "head_size"),
            (lambda: base(a6=10), "rotary_dim"),
            (lambda: base(a0=lambda a: a[0][:-1]), "positions"),
            (lambda: base(a0=lambda a: a[0].float()), "positions"),
            (lambda: base(a2=lambda a: a[2].half()), "key"),
            (lambda: base(a4=lambda a: a[4][:, :-1], a6=None), "rotary_dim"),
        ]

    BAD_VLLM = _bad_vllm()

    @pytest.mark.parametrize("make_args", [m for m, _ in BAD_VLLM], ids=[s for _, s in BAD_VLLM])
    def test_bad_vllm_inputs_raise_the_natives_errors(make_args):
        args = make_args()
        with pytest.raises(ValueError) as native_error:
            R.rotary_embedding.native(*args)
        with pytest.raises(ValueError) as triton_error:
            _run(R.rotary_embedding, args)
        assert str(triton_error.value) == str(native_error.value)

    def test_bad_hf_and_norm_inputs_raise_the_natives_errors():
        q, k, cos, sin = _hf_transposed(torch.bfloat16, 16)
        w = torch.ones(16, dtype=torch.bfloat16, device=DEVICE)
        cases = [
            (R.rotary_pos_emb, (q, k, cos[..., :15], sin[..., :15], 1)),
            (R.rotary_pos_emb, (q, k, cos[:, :3], sin[:, :3], 1)),
            (R.qk_norm_rotary_pos_emb, (q, k, w[:8], w, 1e-6, cos, sin, 1, 0.0)),
        ]
        args = _sample(R.qk_norm_rope, dtype=torch.bfloat16)
        cases.append((R.qk_norm_rope, (*args[:3], args[3][:5], *args[4:])))
        for op, a in cases:
            with pytest.raises(ValueError) as native_error:
                op.native(*a)
            with pytest.raises(ValueError) as triton_error:
                _run(op, a)
            assert str(triton_error.value) == str(native_error.value)

    def test_predicates_reject_what_the_kernels_cannot_do():
        from opir.providers.triton import rotary_impls as impls

        args = _sample(R.rotary_embedding, dtype=torch.bfloat16)
        assert impls.supports_rotary_embedding(*args)
        assert not impls.supports_rotary_embedding(args[0], args[1].double(), *args[2:])
        cache64 = args[4].double()
        assert not impls.supports_rotary_embedding(*args[:4], cache64, *args[5:])
        q, k, cos, sin = _hf_transposed(torch.bfloat16, 16)
        assert impls.supports_rotary_pos_emb(q, k, cos, sin, 1)
        assert not impls.supports_rotary_pos_emb(q, k, cos.float(), sin.float(), 1)  # promotes
        assert not impls.supports_rotary_pos_emb(q, k, cos, sin, 0)
        assert not impls.supports_rotary_pos_emb(q, k, cos[0], sin[0], 1)  # 2-D cos
        assert not impls.supports_rotary_pos_emb(q.transpose(2, 3), k, cos, sin, 1)
        w = torch.ones(16, device=DEVICE)
        assert not impls.supports_qk_norm_rotary_pos_emb(q, k, w, w.half(), 1e-6, cos, sin)

    def test_hf_with_fp32_cos_falls_through_to_native():
        """torch promotes bf16 q times fp32 cos to fp32: the predicate leaves it to native."""
        q, k, cos, sin = _hf_transposed(torch.bfloat16, 16)
        args = (q, k, cos.float(), sin.float(), 1)
        with R.rotary_pos_emb.set_priority(["triton", "native"]):
            got = R.rotary_pos_emb(*args)
        assert got[0].dtype == torch.float32
        assert torch.equal(got[0], R.rotary_pos_emb.native(*args)[0])

    # --- tracing ------------------------------------------------------------------------

    def test_traced_calls_are_one_triton_op():
        from torch.fx.experimental.proxy_tensor import make_fx

        args = _sample(R.rotary_embedding, dtype=torch.bfloat16)
        gm = make_fx(R.rotary_embedding.impls["triton"].fn)(*args)
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert torch.ops.opir_triton.rotary_embedding_.default in targets
        q, k, cos, sin = _hf_transposed(torch.bfloat16, 8)
        gm = make_fx(R.rotary_pos_emb.impls["triton"].fn)(q, k, cos, sin, 1)
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert targets.count(torch.ops.opir_triton.rotary_pos_emb.default) == 1
        got = gm(q, k, cos, sin, 1)
        want = R.rotary_pos_emb.native(q, k, cos, sin, 1)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))

    def test_functional_custom_ops_match_native():
        args = _sample(R.rotary_embedding, dtype=torch.float16, partial=True)
        got = torch.ops.opir_triton.rotary_embedding(*args)
        want = R.rotary_embedding.native(*args)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        args = _sample(R.qk_norm_rope, dtype=torch.float16)
        got = torch.ops.opir_triton.qk_norm_rope(*args)
        want = R.qk_norm_rope.native(*args)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, **R.qk_norm_rope.tolerance(torch.float16)._asdict())

    def test_compile_lowers_key_none_onto_the_triton_kernel():
        """opir.compile records the op (key=None: one output) and lowers it to triton."""

        class Layer(torch.nn.Module):
            def forward(self, positions, q, cache):
                (out,) = R.rotary_embedding(positions, q, None, 16, cache, True)
                return out * 2

        torch._dynamo.reset()
        args = _sample(R.rotary_embedding, dtype=torch.bfloat16, hidden_size=16, has_key=False)
        positions, q, _, _, cache, _, _ = args
        options = {"inductor": False, "priority": {"rotary_embedding": ["triton"]}}
        compiled = opir.compile(Layer(), options=options)
        with torch.no_grad():
            got = compiled(positions, q, cache)
        want = R.rotary_embedding.native(positions, q, None, 16, cache, True)[0] * 2
        assert torch.equal(got, want)
        lowered = [(e.op, e.provider) for e in compiled.opir_report.last.lowered]
        assert lowered == [("rotary_embedding", "triton")]
