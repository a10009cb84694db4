"""The triton provider against native, kernel by kernel.

Where the kernels can run in this process — a CUDA/ROCm GPU, or
``TRITON_INTERPRET=1`` set before ``import opir`` — every test below runs here.
On a plain CPU run (``make test``) this module instead holds one test that
runs this same file in a subprocess with ``TRITON_INTERPRET=1``: the variable
must be set before opir and Triton are imported, which the shared conftest
already did. The interpreter runs one program at a time in numpy, so shapes stay
small: the full dtype x tokens x hidden grid takes ~25 s, the whole file ~1 min.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import run_in_interpreter

import opir
from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers import triton as provider

RUN_HERE = provider.SUPPORTED
DEVICE = "cpu" if provider.INTERPRET else "cuda"


if not RUN_HERE:

    def test_provider_says_why_it_is_unsupported():
        assert not rms_norm.impls["triton"].supported
        reason = rms_norm.impls["triton"].reason
        assert "TRITON_INTERPRET=1" in reason or "triton is not installed" in reason
        assert "triton" not in rms_norm.get_priority()

    @pytest.mark.slow
    def test_kernels_in_the_triton_interpreter():
        """Run this file again with TRITON_INTERPRET=1 (the real kernels, on CPU)."""
        run_in_interpreter(__file__, timeout=900)

else:
    from conformance import clone_args, non_collapsible_3d

    DTYPES = [torch.float32, torch.bfloat16, torch.float16]
    TOKENS = [0, 1, 7, 64]
    HIDDEN = [1, 7, 64, 769, 1024, 5125]
    OPS = [rms_norm, fused_add_rms_norm, rms_norm_gated]

    def _ids(v):
        return str(v).removeprefix("torch.")

    def _sample(op, **kw):
        args = op.sample_inputs(device=DEVICE, **kw)
        return args

    def _check(op, args, donate=False):
        """Run exactly the triton impl (strict) and compare with native."""
        expected = op.native(*clone_args(args))
        before = clone_args(args)
        call = op.maybe_inplace if donate else op
        with op.set_priority(["triton"]), opir.strict():
            got = call(*args)
        tol = op.tolerance(args[0].dtype)
        torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)
        if not donate:
            for a, b in zip(args, before, strict=True):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), "the functional overload mutated an input"
        return got

    # The whole conformance grid: ~25 s in the interpreter on one core.
    GRID = [(d, t, h) for d in DTYPES for t in TOKENS for h in HIDDEN]

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize(("dtype", "tokens", "hidden"), GRID, ids=str)
    def test_grid(op, dtype, tokens, hidden):
        _check(op, _sample(op, dtype=dtype, num_tokens=tokens, hidden_size=hidden))

    # (x dtype, weight dtype or None): Gemma's fp32 weight with bf16/fp16 x,
    # an fp32 residual stream into a bf16 weight, mixed half types (multiply in fp32).
    WEIGHTS = [
        (torch.bfloat16, None),
        (torch.float16, None),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float16),
    ]

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize(("dtype", "weight_dtype"), WEIGHTS, ids=str)
    def test_weight_dtypes(op, dtype, weight_dtype):
        kw = {"has_weight": False} if weight_dtype is None else {"weight_dtype": weight_dtype}
        _check(op, _sample(op, dtype=dtype, num_tokens=7, hidden_size=769, **kw))

    @pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm], ids=lambda op: op.name)
    @pytest.mark.parametrize(
        ("dtype", "weight_dtype"),
        [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32), (torch.float32,) * 2],
        ids=str,
    )
    def test_weight_bias(op, dtype, weight_dtype):
        args = _sample(op, dtype=dtype, weight_dtype=weight_dtype, num_tokens=7, hidden_size=769)
        _check(op, (*args[:-1], None, 1.0))  # (..., variance_size=None, weight_bias=1.0)

    FP32_MULTIPLY = [
        (rms_norm, lambda x, g, w: (x, w, 1e-6, None, 0.0, True)),
        (fused_add_rms_norm, lambda x, g, w: (x, g, w, 1e-6, None, 0.0, True)),
        (rms_norm_gated, lambda x, g, w: (x, g, w, 1e-6, None, False, True)),
        (rms_norm_gated, lambda x, g, w: (x, g, w, 1e-6, 64, True, True)),
    ]

    @pytest.mark.parametrize(("op", "make"), FP32_MULTIPLY, ids=lambda v: getattr(v, "name", ""))
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_ids)
    def test_fp32_multiply(op, make, dtype):
        """Multiply in fp32, round once: bit-identical to native but for the rare
        last-bit flip of the fp32 rms (the double-rounding contract agrees on ~74%)."""
        gen = torch.Generator().manual_seed(0)
        x, g = (torch.randn(16, 256, generator=gen).to(DEVICE, dtype) * 3 for _ in range(2))
        w = (torch.randn(256, generator=gen) * 0.5 + 0.25).to(DEVICE, dtype)
        args = make(x, g, w)
        want = op.native(*args)
        with op.set_priority(["triton"]), opir.strict():
            got = op(*args)
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        for a, b in zip(got, want, strict=True):
            assert (a == b).float().mean().item() > 0.999

    @pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm], ids=lambda op: op.name)
    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize("variance_size", [1, 64, 769])
    def test_variance_size(op, dtype, variance_size):
        args = _sample(op, dtype=dtype, num_tokens=7, hidden_size=769, variance_size=variance_size)
        _check(op, args)

    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize("group_size", [None, 16, 128])
    @pytest.mark.parametrize("norm_before_gate", [False, True])
    def test_gated_groups(dtype, group_size, norm_before_gate):
        args = _sample(
            rms_norm_gated,
            dtype=dtype,
            num_tokens=3,
            hidden_size=256,
            group_size=group_size,
            norm_before_gate=norm_before_gate,
        )
        _check(rms_norm_gated, args)

    @pytest.mark.parametrize("norm_before_gate", [False, True])
    @pytest.mark.parametrize("weight", [None, torch.bfloat16])
    def test_gated_no_gate_and_mixed_gate(norm_before_gate, weight):
        kw = {"has_weight": weight is not None, "weight_dtype": weight}
        x, gate, w, eps, *_ = _sample(
            rms_norm_gated, dtype=torch.float32, num_tokens=7, hidden_size=256, **kw
        )
        _check(rms_norm_gated, (x, None, w, eps, 64, norm_before_gate))
        # Hugging Face Mamba2 in bf16: fp32 x with a bf16 gate
        _check(rms_norm_gated, (x, gate.bfloat16(), w, eps, 64, norm_before_gate))

    def _views(op, args, make_view):
        n = 1 if op is rms_norm else 2  # x (and residual or gate) become views
        return tuple(make_view(a) if i < n else a for i, a in enumerate(args))

    def _strided(x, pad=13):
        wide = torch.zeros(*x.shape[:-1], x.shape[-1] + pad, dtype=x.dtype, device=x.device)
        wide[..., : x.shape[-1]] = x
        return wide[..., : x.shape[-1]]

    def _four_d(x2d):
        """[2, 2, T, H] view whose leading dims collapse into no fewer than three."""
        t, h = x2d.shape
        buffer = torch.zeros(2, 3, t + 1, h + 3, dtype=x2d.dtype, device=x2d.device)
        view = buffer[:, :2, :t, :h]
        view.copy_(x2d.expand(2, 2, t, h))
        return view

    LAYOUTS = {
        "strided_rows": _strided,
        "3d_non_collapsible": lambda x: non_collapsible_3d(x.cpu()).to(x.device),
        "4d_non_collapsible": _four_d,
    }

    @pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
    def test_layouts(op, layout, dtype):
        args = _sample(op, dtype=dtype, num_tokens=5, hidden_size=64)
        _check(op, _views(op, args, LAYOUTS[layout]))

    @pytest.mark.parametrize("layout", ["contiguous", *LAYOUTS])
    @pytest.mark.parametrize("weight_bias", [0.0, 1.0])
    def test_maybe_inplace_writes_into_the_donated_inputs(layout, weight_bias):
        args = fused_add_rms_norm.sample_inputs(
            dtype=torch.bfloat16, device=DEVICE, num_tokens=5, hidden_size=769
        )
        if layout != "contiguous":
            args = _views(fused_add_rms_norm, args, LAYOUTS[layout])
        args = (*args[:4], None, weight_bias)
        x, residual = args[0], args[1]
        out, residual_out = _check(fused_add_rms_norm, args, donate=True)
        assert out is x and residual_out is residual  # results written in place

    @pytest.mark.parametrize("weight_of", ["x", "residual", "x_other_storage"])
    def test_maybe_inplace_with_a_weight_viewing_a_donated_input(weight_of):
        """Expected: native's values. Actual: the kernel overwrote the weight (a view
        of x or the residual, or the same memory through a second storage) while later
        rows still read it (the core donation guard now serves such calls on clones)."""
        import numpy as np

        g = torch.Generator().manual_seed(0)
        x, residual = (torch.randn(6, 64, generator=g) for _ in range(2))
        if weight_of == "x_other_storage":
            array = x.numpy()
            x, weight = torch.from_numpy(array), torch.from_numpy(array)[1]
            assert not np.shares_memory(array, residual.numpy())
        else:
            weight = (x if weight_of == "x" else residual)[1]
        args = (x, residual, weight, 1e-6)
        expected = fused_add_rms_norm.native(*clone_args(args[:2]), weight.clone(), 1e-6)
        with fused_add_rms_norm.set_priority(["triton"]), opir.strict():
            got = fused_add_rms_norm.maybe_inplace(*args)
        torch.testing.assert_close(got, expected)

    def test_long_rows_take_the_two_pass_kernel(monkeypatch):
        """Rows longer than one block loop twice over the row (sum, then scale)."""
        from opir.providers.triton import config

        monkeypatch.setattr(config, "MAX_SINGLE_PASS", 256)
        monkeypatch.setattr(config, "LOOP_BLOCK", 128)
        config.launch_config.cache_clear()
        try:
            assert config.launch_config(769) == (128, config.LOOP_WARPS, False)
            for op in OPS:
                _check(op, _sample(op, dtype=torch.bfloat16, num_tokens=3, hidden_size=769))
            _check(
                rms_norm, _sample(rms_norm, dtype=torch.float16, variance_size=300, hidden_size=769)
            )
            args = _sample(rms_norm_gated, dtype=torch.float32, hidden_size=1024, group_size=512)
            _check(rms_norm_gated, args)
            args = _sample(fused_add_rms_norm, dtype=torch.bfloat16, hidden_size=769)
            _check(fused_add_rms_norm, args, donate=True)
        finally:
            config.launch_config.cache_clear()

    def test_hidden_beyond_one_block():
        for op in OPS:
            _check(op, _sample(op, dtype=torch.bfloat16, num_tokens=2, hidden_size=16385))

    @pytest.mark.parametrize("residual", [True, False])
    @pytest.mark.parametrize(
        ("dtype", "weight_bias"), [(torch.bfloat16, 1.0), (torch.float32, 0.0)]
    )
    def test_all_reduce_rms_norm_single_rank(residual, dtype, weight_bias):
        args = all_reduce_rms_norm.sample_inputs(
            dtype=dtype,
            device=DEVICE,
            num_tokens=7,
            hidden_size=769,
            residual=residual,
            weight_bias=weight_bias,
        )
        _check(all_reduce_rms_norm, args)
        _check(all_reduce_rms_norm, (*args[:4], 100, args[5]))  # variance_size

    # ------------------------------------------------------------ dispatch
    def test_not_a_platform_default_on_cpu():
        if provider.INTERPRET and not torch.cuda.is_available():
            for op in (*OPS, all_reduce_rms_norm):
                assert op.impls["triton"].supported
                assert "triton" not in op.get_priority()

    def test_predicates_reject_what_the_kernels_cannot_do():
        x = torch.randn(8, 16, device=DEVICE)
        w = torch.ones(8, device=DEVICE)
        with rms_norm.set_priority(["triton", "native"]):
            assert rms_norm.dispatch(x.t(), w, 1e-6).provider == "native"  # last dim strided
            assert rms_norm.dispatch(x.double()[:, :8], None, 1e-6).provider == "native"
            assert rms_norm.dispatch(x[:, :8], w.double(), 1e-6).provider == "native"
            assert rms_norm.dispatch(x[:, :8], w, 1e-6).provider == "triton"
        with rms_norm_gated.set_priority(["triton", "native"]):
            assert (
                rms_norm_gated.dispatch(x, x.t().contiguous().t(), None, 1e-6).provider == "native"
            )

    def test_predicates_answer_plain_bools_for_fake_tensors():
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            x = torch.empty(4, 64, device=DEVICE, dtype=torch.bfloat16)
            w = torch.empty(64, device=DEVICE)
            for impl, args in [
                (rms_norm.impls["triton"], (x, w, 1e-6)),
                (fused_add_rms_norm.impls["triton"], (x, x, w, 1e-6)),
                (rms_norm_gated.impls["triton"], (x, x, w, 1e-6)),
                (all_reduce_rms_norm.impls["triton"], (x, None, w, 1e-6)),
            ]:
                assert impl.supports_args(*args) is True

    @pytest.mark.parametrize(
        ("op", "make_args", "match"),
        [
            (rms_norm, lambda x: (x, torch.ones(3, device=DEVICE), 1e-6), "weight must have shape"),
            (
                fused_add_rms_norm,
                lambda x: (x, x.half(), None, 1e-6),
                "x_residual must match",
            ),
            (rms_norm_gated, lambda x: (x, x, None, 1e-6, 5), "group_size must be a divisor"),
            (rms_norm, lambda x: (x, None, 1e-6, 65), r"variance_size must be in \[1,"),
        ],
        ids=["weight_len", "residual_dtype", "group_size", "variance_size"],
    )
    def test_bad_inputs_raise_clear_errors(op, make_args, match):
        x = torch.randn(2, 64, device=DEVICE)
        with op.set_priority(["triton"]), opir.strict(), pytest.raises(ValueError, match=match):
            op(*make_args(x))

    # ---------------------------------------------------------- compile
    class _Model(torch.nn.Module):
        def __init__(self, hidden=64):
            super().__init__()
            self.norm = opir.layers.RMSNorm(hidden)
            self.gemma = opir.layers.GemmaRMSNorm(hidden)
            self.proj = torch.nn.Linear(hidden, hidden)
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.gemma.weight.uniform_(-0.5, 0.5)

        def forward(self, x, residual):
            y = self.norm(x * 2.0)
            y, h = self.gemma(self.proj(y), residual)
            return y + h

    @pytest.mark.slow
    def test_compile_lowers_onto_the_triton_kernels():
        torch._dynamo.reset()
        model = _Model().to(DEVICE).eval()
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x, residual = (torch.randn(5, 64, generator=g, device=DEVICE) for _ in range(2))
        priority = {"rms_norm": ["triton"], "fused_add_rms_norm": ["triton"]}
        compiled = opir.compile(model, options={"inductor": False, "priority": priority})
        with torch.no_grad():
            got = compiled(x.clone(), residual.clone())
            expected = model(x.clone(), residual.clone())
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
        lowered = compiled.opir_report.last.lowered
        assert {e.op for e in lowered} == {"rms_norm", "fused_add_rms_norm"}
        assert {e.provider for e in lowered} == {"triton"}
