"""The triton provider's quantisation kernels against native, op by op.

Held to the contract of ``opir.ops.quant``. In Triton's interpreter every op is
bit-identical to its native (q's bytes, scales, residuals) for every quantised
dtype: int8, fp8 e4m3fn and fp8 e4m3fnuz all run there, because the kernels
encode int8 and fp8 by integer arithmetic instead of Triton's conversions (see
``opir.providers.triton.quant``). On a GPU the expected values are the native
run on CPU copies (the contract's arithmetic: torch's CUDA ``tensor / scalar``
multiplies by a reciprocal); the base ops stay bit-identical there, the fused
ops are held to the ops' stated tolerance (the GPU's rsqrt and fp64 exp).

On a plain CPU run the one test below runs this file again in a subprocess with
``TRITON_INTERPRET=1``. Shapes stay tiny: the interpreter runs one program at a
time in numpy.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import run_in_interpreter

import opir
from opir.ops import all_reduce_rms_norm_quant
from opir.ops import quant as Q
from opir.providers import triton as provider

RUN_HERE = provider.SUPPORTED
DEVICE = "cpu" if provider.INTERPRET else "cuda"
EXACT = provider.INTERPRET  # on a GPU the fused ops are held to their tolerance
OPS = [*Q.BASE_OPS, *Q.FUSED_OPS]
QDTYPES = [torch.int8, torch.float8_e4m3fn, torch.float8_e4m3fnuz]
XDTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _ids(v):
    return getattr(v, "name", None) or str(v).removeprefix("torch.")


if not RUN_HERE:

    def test_provider_says_why_it_is_unsupported():
        for op in (*OPS, Q.scaled_mm, all_reduce_rms_norm_quant):
            assert not op.impls["triton"].supported
            assert "triton" not in op.get_priority()

    @pytest.mark.slow
    def test_kernels_in_the_triton_interpreter():
        """Run this file again with TRITON_INTERPRET=1 (the real kernels, on CPU)."""
        run_in_interpreter(__file__, timeout=600)

    # (PRODUCER, MODE, QK, SINGLE): silu -> per-row fp8 in one pass; norm + residual ->
    # int8 groups, looping; load -> row absmax (per-tensor pass 1), e4m3fnuz static.
    AOT_VARIANTS = [(2, 1, 1, True), (1, 2, 0, False), (0, 3, 2, True), (0, 0, 2, False)]

    @pytest.mark.slow
    @pytest.mark.parametrize("variant", AOT_VARIANTS, ids=str)
    def test_kernel_compiles_for_a_gpu_without_one(variant):
        """The interpreter runs Python, not Triton's compiler: compile the kernel to PTX
        for sm_90 here (no GPU needed) so compiled-mode errors show on CPU machines."""
        pytest.importorskip("triton", reason="triton is a test dependency: pip install triton")
        from pathlib import Path

        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from opir.providers.triton import quant

        if not any(Path(triton.__file__).parent.glob("backends/nvidia/bin/ptxas*")):
            pytest.skip("this triton wheel ships no ptxas")
        producer, mode, qk, single = variant
        sig = {name: "*bf16" for name in ("X", "R", "ROUT", "W")}
        sig |= {"Q": "*i8" if qk == 0 else "*u8", "SCALE": "*fp32", "UB": "*fp32"}
        sig |= {n: "i64" for n in ("inner", "x_so", "x_si", "r_so", "r_si", "ro_so", "ro_si")}
        sig |= {n: "i32" for n in ("n_cols", "var_cols", "w_stride")}
        sig |= {n: "fp32" for n in ("eps", "weight_bias", "qmin", "qmax", "min_scale")}
        sig |= {"s_rs": "i64", "s_cs": "i64"}
        consts = dict(
            PRODUCER=producer, MODE=mode, QK=qk, XK=1, HAS_RESIDUAL=producer == 1,
            HAS_WEIGHT=producer == 1, HAS_BIAS=producer == 1, ROUND=0, HAS_UB=mode == 1,
            UE8M0=mode == 2, GROUP=128, BLOCK=4096, SINGLE=single,
        )  # fmt: skip
        sig |= dict.fromkeys(consts, "constexpr")
        src = ASTSource(fn=quant.quant_kernel, signature=sig, constexprs=consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        assert ".entry quant_kernel" in compiled.asm["ptx"]

else:
    from conformance import clone_args

    def _cpu(args):
        return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)

    def _same_bits(got, expected, what):
        a, b = got.cpu(), expected.cpu()
        if a.dtype.is_floating_point and a.element_size() > 1:
            differ = (a != b) & ~(a.isnan() & b.isnan())
        else:  # int8 / fp8: the bytes themselves (-0.0 too); NaN of either sign is NaN
            differ = a.view(torch.uint8) != b.view(torch.uint8)
            if a.dtype.is_floating_point:
                differ &= ~(a.float().isnan() & b.float().isnan())
        assert not differ.any(), (
            f"{what}: {int(differ.sum())} of {a.numel()} differ from native: got "
            f"{a[differ][:4].tolist()}, native {b[differ][:4].tolist()}"
        )

    def _compare(op, got, expected, exact, donate=False):
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(got) == len(expected)
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert a.shape == b.shape and a.dtype == b.dtype, (i, a.shape, b.shape)
            if not donate:  # the layout the native returns (column-major scales too)
                assert a.stride() == b.stride() or a.numel() <= 1, (i, a.stride(), b.stride())
            if exact:
                _same_bits(a, b, f"{op.name} output {i}")
            else:
                tol = op.tolerance(a.dtype)
                torch.testing.assert_close(
                    a.cpu().float(), b.cpu().float(), atol=tol.atol, rtol=tol.rtol,
                    equal_nan=True,
                )  # fmt: skip

    def _run(op, args, donate=False):
        call = op.maybe_inplace if donate else op
        with op.set_priority(["triton"]), opir.strict():
            return call(*args)

    NORMS = {op.name for op in Q.FUSED_OPS if "rms_norm" in op.name} | {"all_reduce_rms_norm_quant"}

    def _exact(op, args):
        """Bit-identical: the base ops everywhere; the fused ops in the interpreter, except
        a norm of fp32 x (its fp32 rms in another summation order is not rounded away)."""
        if op in Q.BASE_OPS:
            return True
        return EXACT and not (op.name in NORMS and args[0].dtype == torch.float32)

    def _check(op, args, donate=False, exact=None):
        """Exactly the triton impl vs the native on CPU copies."""
        exact = _exact(op, args) if exact is None else exact
        expected = op.native(*clone_args(_cpu(args)))
        before = clone_args(args)
        got = _run(op, args, donate)
        _compare(op, got, expected, exact, donate)
        if not donate:
            for a, b in zip(args, before, strict=True):
                if isinstance(a, torch.Tensor):
                    _same_bits(a, b, "an input (the functional overload mutated it)")
        return got

    def _sample(op, **kw):
        return op.sample_inputs(device=DEVICE, **kw)

    # Every op x quantised dtype x x dtype on rows of several groups; one short row
    # per op and quantised dtype.
    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    @pytest.mark.parametrize("dtype", XDTYPES, ids=_ids)
    def test_grid(op, qdtype, dtype):
        _check(op, _sample(op, dtype=dtype, quant_dtype=qdtype, num_tokens=3, hidden_size=320))

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    def test_one_short_row(op, qdtype):
        _check(op, _sample(op, dtype=torch.bfloat16, quant_dtype=qdtype, num_tokens=1,
                           hidden_size=64))  # fmt: skip

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    def test_zero_tokens_and_3d(op):
        _check(op, _sample(op, dtype=torch.float16, num_tokens=0, hidden_size=128))
        args = _sample(op, dtype=torch.bfloat16, quant_dtype=torch.float8_e4m3fn,
                       num_tokens=6, hidden_size=128)  # fmt: skip
        _check(op, tuple(_three(a) for a in args))

    def _three(a):
        """[6, K] activations as [2, 3, K] (the weight and scales stay)."""
        return a.view(2, 3, -1) if isinstance(a, torch.Tensor) and a.dim() == 2 else a

    def _strided(t):
        wide = torch.zeros(t.shape[0], t.shape[1] + 6, dtype=t.dtype, device=t.device)
        wide[:, 3 : 3 + t.shape[1]] = t
        return wide[:, 3 : 3 + t.shape[1]]

    def _four_d(t):
        """[2, 2, T/2... ] view whose leading dims do not collapse (the copy path)."""
        buf = torch.zeros(2, 2, t.shape[0] + 1, t.shape[1] + 2, dtype=t.dtype, device=t.device)
        buf[:, :, : t.shape[0], : t.shape[1]] = t
        return buf[:, :, : t.shape[0], : t.shape[1]]

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize("layout", [_strided, _four_d], ids=["strided", "4d"])
    def test_layouts(op, layout):
        args = _sample(op, dtype=torch.bfloat16, quant_dtype=torch.float8_e4m3fn,
                       num_tokens=3, hidden_size=128)  # fmt: skip
        n_act = 2 if op.name.startswith("fused_add") else 1
        args = tuple(layout(a) if i < n_act else a for i, a in enumerate(args))
        _check(op, args)

    # ----------------------------------------------------------- the contract's edges
    def _edge_rows(dtype, hidden=128):
        """Rows that exercise the rules: zeros, -0.0, NaN, +-inf, huge, tiny, ties."""
        g = torch.Generator().manual_seed(1)
        x = 2.0 * torch.randn(8, hidden, generator=g)
        x[0] = 0.0
        x[1] = -0.0
        x[2, 5] = float("nan")
        x[3, 7] = float("inf")
        x[4, 9] = float("-inf")
        x[5] *= 1e-4  # fp8 subnormals after scaling
        x[6, :4] = torch.tensor([0.5, 1.5, 2.5, -2.5])  # int8 ties at scale 1
        x[7] *= 1e3  # saturates a static scale
        return x.to(dtype).to(DEVICE)

    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    @pytest.mark.parametrize("dtype", XDTYPES, ids=_ids)
    def test_static_quant_edges(qdtype, dtype):
        x = _edge_rows(dtype)
        for s in (1.0, 0.037, 3e-6):
            scale = torch.tensor([s], device=DEVICE)
            _check(Q.static_quant, (x, scale, qdtype), exact=True)

    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    @pytest.mark.parametrize("per_token", [True, False])
    def test_dynamic_quant_edges(qdtype, per_token):
        x = _edge_rows(torch.float32)
        _check(Q.dynamic_quant, (x, qdtype, per_token, None), exact=True)
        _check(Q.dynamic_quant, (x[5:], qdtype, per_token, None), exact=True)  # finite
        ub = torch.tensor([1.25], device=DEVICE)
        _check(Q.dynamic_quant, (x, qdtype, per_token, ub), exact=True)

    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    @pytest.mark.parametrize("group_size", [64, 128])
    @pytest.mark.parametrize("column_major", [False, True])
    @pytest.mark.parametrize("ue8m0", [False, True])
    def test_group_quant_edges(qdtype, group_size, column_major, ue8m0):
        x = _edge_rows(torch.bfloat16, hidden=256)
        _check(Q.dynamic_group_quant, (x, qdtype, group_size, column_major, ue8m0), exact=True)
        args = (x[5:].view(3, 1, 256), qdtype, group_size, column_major, ue8m0)
        _check(Q.dynamic_group_quant, args, exact=True)  # 3-D, column-major storage
        args = (x[:6, :0].view(2, 3, 0), qdtype, group_size, column_major, ue8m0)
        _check(Q.dynamic_group_quant, args, exact=True)  # no columns: [2, 3, 0] scales
        w = torch.ones(256, dtype=torch.bfloat16, device=DEVICE)
        args = (x, w, 1e-6, qdtype, group_size, column_major, ue8m0, 0.0)
        _check(Q.rms_norm_group_quant, args)

    def test_ue8m0_scales_are_powers_of_two():
        x = _edge_rows(torch.float32)[5:]
        _, s = _run(Q.dynamic_group_quant, (x, torch.float8_e4m3fn, 64, False, True))
        m, _ = torch.frexp(s.cpu())
        assert bool((m == 0.5).all())

    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    def test_fused_edges(qdtype):
        x = _edge_rows(torch.bfloat16)
        w = torch.ones(128, dtype=torch.bfloat16, device=DEVICE)
        scale = torch.tensor([0.05], device=DEVICE)
        _check(Q.rms_norm_quant, (x, w, 1e-6, scale, qdtype, 0.0))
        _check(Q.rms_norm_dynamic_quant, (x, w, 1e-6, qdtype, None, 0.0))
        _check(Q.fused_add_rms_norm_dynamic_quant, (x, x.flip(0), w, 1e-6, qdtype, None, 0.0))
        _check(Q.silu_and_mul_quant, (x, scale, qdtype))
        _check(Q.silu_and_mul_dynamic_quant, (x, qdtype, torch.tensor([2.0], device=DEVICE)))

    @pytest.mark.parametrize(
        ("dtype", "weight_dtype", "weight_bias"),
        [
            (torch.bfloat16, torch.float32, 1.0),  # Gemma
            (torch.float16, torch.float32, 0.0),  # single rounding
            (torch.float32, torch.bfloat16, 0.0),  # fp32 stream, bf16 weight
            (torch.bfloat16, None, 0.0),  # no weight
        ],
        ids=["gemma", "fp32w", "fp32x", "noweight"],
    )
    def test_norm_weights(dtype, weight_dtype, weight_bias):
        for op in (Q.rms_norm_quant, Q.rms_norm_dynamic_quant, Q.rms_norm_group_quant,
                   Q.fused_add_rms_norm_quant, Q.fused_add_rms_norm_dynamic_quant):  # fmt: skip
            args = _sample(op, dtype=dtype, quant_dtype=torch.float8_e4m3fn, num_tokens=3,
                           hidden_size=128, weight_dtype=weight_dtype,
                           has_weight=weight_dtype is not None or dtype is torch.float32,
                           weight_bias=weight_bias)  # fmt: skip
            _check(op, args)

    def test_long_rows_take_the_looping_kernel(monkeypatch):
        """Rows longer than one block loop over the row (statistics, absmax, quantise)."""
        from opir.providers.triton import config

        monkeypatch.setattr(config, "MAX_SINGLE_PASS", 256)
        monkeypatch.setattr(config, "LOOP_BLOCK", 128)
        config.launch_config.cache_clear()
        try:
            assert config.launch_config(640) == (128, config.LOOP_WARPS, False)
            for op in OPS:
                args = _sample(op, dtype=torch.bfloat16, quant_dtype=torch.float8_e4m3fn,
                               num_tokens=3, hidden_size=640)  # fmt: skip
                _check(op, args)
            x = _edge_rows(torch.float32, hidden=640)
            _check(Q.dynamic_quant, (x, torch.int8, True, None), exact=True)
            _check(Q.dynamic_quant, (x, torch.int8, False, None), exact=True)
            args = _sample(Q.fused_add_rms_norm_dynamic_quant, dtype=torch.bfloat16,
                           num_tokens=3, hidden_size=640)  # fmt: skip
            _check(Q.fused_add_rms_norm_dynamic_quant, args, donate=True)
        finally:
            config.launch_config.cache_clear()

    @pytest.mark.parametrize(
        "op", [Q.fused_add_rms_norm_quant, Q.fused_add_rms_norm_dynamic_quant], ids=_ids
    )
    @pytest.mark.parametrize("layout", ["contiguous", "strided"])
    def test_maybe_inplace_writes_the_residual_into_the_donated_input(op, layout):
        args = _sample(op, dtype=torch.bfloat16, quant_dtype=torch.float8_e4m3fn,
                       num_tokens=5, hidden_size=320)  # fmt: skip
        if layout == "strided":
            args = (_strided(args[0]), _strided(args[1]), *args[2:])
        residual = args[1]
        got = _check(op, args, donate=True)
        assert got[-1] is residual

    @pytest.mark.parametrize("residual", [True, False])
    @pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
    def test_all_reduce_rms_norm_quant_single_rank(residual, qdtype):
        op = all_reduce_rms_norm_quant
        args = op.sample_inputs(dtype=torch.bfloat16, device=DEVICE, num_tokens=5,
                                hidden_size=192, residual=residual, quant_dtype=qdtype)  # fmt: skip
        _check(op, args)
        _check(op, (*args[:6], 100, 1.0))  # variance_size, Gemma's weight_bias

    def test_fused_equals_the_triton_kernels_in_sequence():
        """On any device: a fused kernel is its unfused triton kernels, bit for bit."""
        from opir.ops import fused_add_rms_norm, rms_norm, silu_and_mul

        g = torch.Generator().manual_seed(3)
        x = torch.randn(9, 4096, generator=g).bfloat16().to(DEVICE)
        r = torch.randn(9, 4096, generator=g).bfloat16().to(DEVICE)
        w = (1 + 0.1 * torch.randn(4096, generator=g)).bfloat16().to(DEVICE)
        scale = torch.tensor([0.02], device=DEVICE)
        fp8 = torch.float8_e4m3fn
        with opir.priority({op.name: ["triton"] for op in (
            *OPS, rms_norm, fused_add_rms_norm, silu_and_mul)}), opir.strict():  # fmt: skip
            y = rms_norm(x, w, 1e-6)
            _same_bits(Q.rms_norm_quant(x, w, 1e-6, scale, fp8), Q.static_quant(y, scale, fp8),
                       "rms_norm_quant")  # fmt: skip
            fused = Q.rms_norm_dynamic_quant(x, w, 1e-6, torch.int8)
            for a, b in zip(fused, Q.dynamic_quant(y, torch.int8), strict=True):
                _same_bits(a, b, "rms_norm_dynamic_quant")
            out, res = fused_add_rms_norm(x, r, w, 1e-6)
            q, res_q = Q.fused_add_rms_norm_quant(x, r, w, 1e-6, scale, fp8)
            _same_bits(q, Q.static_quant(out, scale, fp8), "fused_add_rms_norm_quant")
            _same_bits(res_q, res, "fused_add_rms_norm_quant residual")
            act = silu_and_mul(x)
            _same_bits(Q.silu_and_mul_quant(x, scale, fp8), Q.static_quant(act, scale, fp8),
                       "silu_and_mul_quant")  # fmt: skip
            fused = Q.silu_and_mul_dynamic_quant(x, fp8)
            for a, b in zip(fused, Q.dynamic_quant(act, fp8), strict=True):
                _same_bits(a, b, "silu_and_mul_dynamic_quant")

    # ------------------------------------------------------------ dispatch and errors
    def test_not_a_platform_default_on_cpu():
        if provider.INTERPRET and not torch.cuda.is_available():
            for op in (*OPS, all_reduce_rms_norm_quant):
                assert op.impls["triton"].supported
                assert "triton" not in op.get_priority()

    def test_predicates_reject_what_the_kernels_cannot_do():
        x = torch.randn(8, 128, device=DEVICE)
        scale = torch.tensor([0.1], device=DEVICE)
        with Q.static_quant.set_priority(["triton", "native"]):
            dispatch = Q.static_quant.dispatch
            assert dispatch(x.t(), scale, torch.int8).provider == "native"  # last dim strided
            assert dispatch(x.double(), scale, torch.int8).provider == "native"
            assert dispatch(x, scale, torch.int8).provider == "triton"
        with Q.scaled_mm.set_priority(["triton", "native"]):
            args = Q.scaled_mm.sample_inputs(dtype=torch.bfloat16, device=DEVICE)
            assert Q.scaled_mm.dispatch(*args).provider == "native"  # int8: not _scaled_mm

    def test_predicates_answer_plain_bools_for_fake_tensors():
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            x = torch.empty(4, 128, device=DEVICE, dtype=torch.bfloat16)
            w = torch.empty(128, device=DEVICE)
            s = torch.empty(1, device=DEVICE)
            for op, args in [
                (Q.static_quant, (x, s, torch.int8)),
                (Q.dynamic_group_quant, (x, torch.int8)),
                (Q.rms_norm_quant, (x, w, 1e-6, s, torch.int8)),
                (Q.fused_add_rms_norm_dynamic_quant, (x, x, w, 1e-6, torch.int8)),
                (Q.silu_and_mul_dynamic_quant, (x, torch.int8)),
            ]:
                assert op.impls["triton"].supports_args(*args) is True

    def _bad(x):
        s = torch.tensor([0.1], device=DEVICE)
        return [
            (Q.static_quant, (x, s, torch.float16), "dtype must be one of"),
            (Q.static_quant, (x, s.double(), torch.int8), "scale must be float32"),
            (Q.static_quant, (x, torch.ones(2, device=DEVICE), torch.int8), "shape \\[1\\]"),
            (Q.dynamic_group_quant, (x, torch.int8, 32), "group_size must be 64 or 128"),
            (Q.dynamic_group_quant, (x[:, :96], torch.int8, 64), "must divide"),
            (
                Q.rms_norm_quant,
                (x, torch.ones(3, device=DEVICE), 1e-6, s, torch.int8),
                "weight must have shape",
            ),
            (
                Q.fused_add_rms_norm_quant,
                (x, x.half(), None, 1e-6, s, torch.int8),
                "x_residual must match",
            ),
            (Q.silu_and_mul_quant, (x[:, :5], s, torch.int8), "last dim must be even"),
            (Q.dynamic_quant, (x, torch.int8, True, s.double()), "scale_ub must be float32"),
        ]

    @pytest.mark.parametrize("case", range(9))
    def test_bad_inputs_raise_the_natives_errors(case):
        x = torch.randn(2, 128, device=DEVICE)
        op, args, match = _bad(x)[case]
        with pytest.raises(ValueError, match=match):
            op.native(*_cpu(args))
        with op.set_priority(["triton"]), opir.strict(), pytest.raises(ValueError, match=match):
            op(*args)

    class _Quantizing(torch.nn.Module):
        def forward(self, x, r, w):
            q, s, res = Q.fused_add_rms_norm_dynamic_quant(x, r, w, 1e-6, torch.int8)
            g, gs = Q.dynamic_group_quant(x * 2.0, torch.float8_e4m3fn, 64)
            return q, s, res, g, gs

    @pytest.mark.slow
    def test_compile_lowers_onto_the_triton_kernels():
        torch._dynamo.reset()
        x = torch.randn(3, 128, device=DEVICE).bfloat16()
        w = torch.ones(128, device=DEVICE).bfloat16()
        model = _Quantizing()
        priority = {op.name: ["triton"] for op in OPS}
        compiled = opir.compile(model, options={"inductor": False, "priority": priority})
        with torch.no_grad():
            got = compiled(x, x.flip(0), w)
            with opir.priority({op.name: ["native"] for op in OPS}):
                expected = model(x, x.flip(0), w)
        for a, b in zip(got, expected, strict=True):
            _same_bits(a, b, "compiled")
        lowered = compiled.opir_report.last.lowered
        assert {e.op for e in lowered} == {
            "fused_add_rms_norm_dynamic_quant",
            "dynamic_group_quant",
        }
        assert {e.provider for e in lowered} == {"triton"}
