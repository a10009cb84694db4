"""The triton provider's activation kernels against native, op by op.

Held to the ops' contract (``opir.ops.activations``): bit-identical to the native
in bf16 and fp16 (``torch.equal``), and in fp32 within the op's tolerance (also
bit-identical in practice). Runs where the kernels can
run; on a plain CPU run the one test below runs this file again in a subprocess
with ``TRITON_INTERPRET=1`` (set before opir and Triton are imported). Shapes
stay tiny: the interpreter runs one program at a time in numpy.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import run_in_interpreter

import opir
from opir.ops import activations as acts
from opir.providers import triton as provider

RUN_HERE = provider.SUPPORTED
DEVICE = "cpu" if provider.INTERPRET else "cuda"
OPS = acts.OPS

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
    DTYPES = [torch.float32, torch.bfloat16, torch.float16]

    def _ids(v):
        return getattr(v, "name", None) or str(v).removeprefix("torch.")

    # Non-default parameters, so every code path of the kernel is exercised.
    VARIANTS = {
        "gelu_and_mul": [{"approximate": "none"}, {"approximate": "tanh"}],
        "gelu_mul": [{"approximate": "none"}, {"approximate": "tanh"}],
        "gelu_and_mul_sparse": [
            {"std_multiplier": 1.6448536269514722, "approximate": "none"},
            {"std_multiplier": 0.3, "approximate": "tanh"},
        ],
        "fatrelu_and_mul": [{"threshold": 0.5}, {"threshold": -0.1}],  # -0.1: not in bf16
        "swigluoai_and_mul": [{"alpha": 1.702, "limit": 7.0}, {"alpha": 1.0, "limit": 2.3}],
    }
    CASES = [(op, kw) for op in OPS for kw in VARIANTS.get(op.name, [{}])]

    def _case_id(case):
        op, kw = case
        return "-".join([op.name, *map(str, kw.values())])

    def _sample(op, kw, **shape):
        """The op's sample tensors with the case's parameters (all of them, in order)."""
        args = op.sample_inputs(device=DEVICE, **shape)
        return (*(a for a in args if isinstance(a, torch.Tensor)), *kw.values())

    def _run(op, args):
        with op.set_priority(["triton"]), opir.strict():
            return op(*args)

    def _check(op, args):
        """Exactly the triton impl vs native: bit-identical in 16-bit, tolerance in fp32."""
        expected = op.native(*args)
        before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        got = _run(op, args)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert got.is_contiguous()
        if args[0].dtype == torch.float32:
            tol = op.tolerance(torch.float32)
            torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)
        else:
            differ = (got != expected) & ~(got.isnan() & expected.isnan())
            assert not differ.any(), (
                f"{int(differ.sum())} of {got.numel()} elements differ from native: "
                f"got {got[differ][:4].tolist()}, native {expected[differ][:4].tolist()}"
            )
        for a, b in zip(args, before, strict=True):
            if isinstance(a, torch.Tensor):
                same = (a == b) | (a.isnan() & b.isnan())  # NaN gates are inputs too
                assert a.shape == b.shape and bool(same.all()), "the op mutated an input"
        return got

    # Every op, parameter variant and dtype: one row of one column, and rows longer
    # than a block. The interpreter runs one program at a time, so shapes stay tiny.
    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
    @pytest.mark.parametrize(("tokens", "d"), [(1, 1), (5, 130)], ids=str)
    def test_grid(case, dtype, tokens, d):
        op, kw = case
        _check(op, _sample(op, kw, dtype=dtype, num_tokens=tokens, hidden_size=d))

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_zero_tokens_and_3d(case):
        op, kw = case
        _check(op, _sample(op, kw, dtype=torch.float16, num_tokens=0, hidden_size=8))
        args = _sample(op, kw, dtype=torch.bfloat16, num_tokens=6, hidden_size=7)
        _check(op, tuple(a.view(2, 3, -1) if isinstance(a, torch.Tensor) else a for a in args))

    def _strided(t):
        """Rows with a stride larger than the row (a slice of a wider buffer)."""
        wide = torch.zeros(t.shape[0], t.shape[1] + 6, dtype=t.dtype, device=t.device)
        wide[:, 3 : 3 + t.shape[1]] = t
        return wide[:, 3 : 3 + t.shape[1]]

    def _three_d(t):
        """[2, T, H] view whose leading dims cannot be merged into one stride."""
        buffer = torch.zeros(2, t.shape[0] + 3, t.shape[1] + 5, dtype=t.dtype, device=t.device)
        buffer[0, : t.shape[0], : t.shape[1]] = t
        buffer[1, : t.shape[0], : t.shape[1]] = t.flip(0)
        return buffer[:, : t.shape[0], : t.shape[1]]

    def _four_d(t):
        buffer = torch.zeros(2, 3, t.shape[0] + 1, t.shape[1] + 3, dtype=t.dtype, device=t.device)
        view = buffer[:, :2, : t.shape[0], : t.shape[1]]
        view.copy_(t.expand(2, 2, *t.shape))
        return view

    LAYOUTS = {"strided_rows": _strided, "3d_non_collapsible": _three_d, "4d": _four_d}
    # Every op on strided rows and a non-collapsible 3-d view; the 4-d copy path once
    # per layout kind (merged, interleaved, separate).
    LAYOUT_CASES = [
        (case, layout)
        for case in CASES
        for layout in LAYOUTS
        if layout != "4d" or case[0].name in ("silu_and_mul", "swigluoai_and_mul", "silu_mul")
    ]

    @pytest.mark.parametrize(
        ("case", "layout"), LAYOUT_CASES, ids=lambda v: v if isinstance(v, str) else _case_id(v)
    )
    def test_layouts(case, layout):
        op, kw = case
        args = _sample(op, kw, dtype=torch.bfloat16, num_tokens=3, hidden_size=9)
        args = tuple(LAYOUTS[layout](a) if isinstance(a, torch.Tensor) else a for a in args)
        assert not args[0].is_contiguous()
        _check(op, args)

    def test_extreme_inputs():
        """Overflowing, underflowing, infinite and NaN inputs follow the native."""
        values = torch.tensor(
            [0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38, 88.7, -88.7, 7.0, -7.0, 20.0, -20.0],
            dtype=torch.float32,
        )
        for dtype in (torch.bfloat16, torch.float16):
            gate = values.to(dtype)
            up = torch.linspace(-3, 3, gate.numel()).to(dtype)
            x = torch.cat([gate, up]).reshape(1, -1)
            for op, args in [
                (acts.silu_and_mul, (x,)),
                (acts.gelu_and_mul, (x, "none")),
                (acts.silu_mul, (gate, up)),
                (acts.fatrelu_and_mul, (x, 0.0)),
            ]:
                _check(op, args)

    def test_many_values_bit_identical_in_16_bit():
        """Every bf16 value in [-6, 6] (and a spread of fp16 values) as a gate: all match."""
        bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
        gate = bits.view(torch.bfloat16)
        gate = gate[gate.float().abs() <= 6.0][::2].contiguous()  # half: the interpreter is slow
        up = torch.full_like(gate, 1.0)
        x = torch.stack([gate, up]).reshape(1, -1)
        for op, kw in [(acts.silu_mul, {}), (acts.gelu_mul, {"approximate": "none"})]:
            _check(op, (gate.reshape(1, -1), up.reshape(1, -1), *kw.values()))
        _check(acts.silu_and_mul, (x,))

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_ids)
    def test_gelu_tanh_every_16_bit_gate(dtype):
        """All 65536 bit patterns as GELU-tanh gates (up = 3, so the product rounds too),
        the far negative tail included: the contract's ``g / (1 + exp(-2y))`` does not
        cancel there, so it does not depend on whose fp64 ``tanh`` (or ``exp``) ran."""
        gate = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
        gate = gate.reshape(1, -1).to(DEVICE)
        _check(acts.gelu_mul, (gate, torch.full_like(gate, 3.0), "tanh"))

    def test_gelu_tanh_fp32_tail_within_tolerance():
        """fp32 gates across both tails of GELU-tanh (results down to ~1e-40)."""
        gate = torch.linspace(-11.0, 11.0, 8191, dtype=torch.float32, device=DEVICE)[None]
        _check(acts.gelu_mul, (gate, torch.full_like(gate, 3.0), "tanh"))

    @pytest.mark.parametrize(
        ("op", "args", "match"),
        [
            (acts.silu_and_mul, lambda: (torch.ones(2, 5),), "last dim must be even"),
            (acts.gelu_and_mul, lambda: (torch.ones(2, 4), "fast"), "approximate"),
            (acts.silu_mul, lambda: (torch.ones(2, 4), torch.ones(2, 3)), "same shape"),
            (acts.swigluoai_and_mul, lambda: (torch.ones(()),), "at least one dimension"),
        ],
        ids=lambda v: getattr(v, "name", None) or "",
    )
    def test_bad_inputs_raise_clear_errors(op, args, match):
        with pytest.raises(ValueError, match=match):
            _run(op, tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args()))

    @pytest.mark.parametrize(
        ("op", "extra", "match"),
        [
            (acts.fatrelu_and_mul, ("0.5",), "threshold must be a float"),
            (acts.swigluoai_and_mul, (None, 7.0), "alpha must be a float"),
            (acts.gelu_and_mul_sparse, ("1", "none"), "std_multiplier must be a float"),
        ],
        ids=lambda v: getattr(v, "name", None) or "",
    )
    def test_non_number_floats_raise_natives_type_error(op, extra, match):
        x = torch.ones(2, 4, device=DEVICE)
        with pytest.raises(TypeError):
            op.native(x, *extra)
        with pytest.raises(TypeError, match=match):
            _run(op, (x, *extra))

    def test_predicates_reject_what_the_kernels_cannot_do():
        from opir.providers.triton import activation_impls as impls

        x = torch.ones(2, 8, device=DEVICE)
        assert impls.supports_silu_and_mul(x)
        assert not impls.supports_silu_and_mul(x.double())
        assert not impls.supports_silu_and_mul(x.t())  # last dim not contiguous
        assert not impls.supports_silu_mul(x, x.t().contiguous().t())

    def test_traced_call_is_one_triton_op():
        """Under make_fx the impl records ``opir_triton.silu_and_mul``: one node."""
        from torch.fx.experimental.proxy_tensor import make_fx

        x = torch.randn(3, 8, device=DEVICE)
        gm = make_fx(acts.silu_and_mul.impls["triton"].fn)(x)
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert targets == [torch.ops.opir_triton.silu_and_mul.default]
        torch.testing.assert_close(gm(x), acts.silu_and_mul.native(x))

    def test_compile_fuses_and_lowers_onto_the_triton_kernels():
        """HF's ``silu(gate(x)) * up(x)`` -> fused ``silu_mul`` -> the triton kernel."""

        class MLP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gate = torch.nn.Linear(16, 24, bias=False)
                self.up = torch.nn.Linear(16, 24, bias=False)

            def forward(self, x):
                return torch.nn.functional.silu(self.gate(x)) * self.up(x)

        torch._dynamo.reset()
        torch.manual_seed(0)
        model = MLP().to(DEVICE).bfloat16().eval()
        x = torch.randn(2, 3, 16, device=DEVICE).bfloat16()
        options = {"inductor": False, "priority": {"silu_mul": ["triton"]}}
        compiled = opir.compile(model, options=options)
        with torch.no_grad():
            got = compiled(x)
            expected = acts.silu_mul.native(model.gate(x), model.up(x))
        assert torch.equal(got, expected)
        report = compiled.opir_report.last
        assert report.fusions == {"silu_mul": 1}
        assert [(e.op, e.provider) for e in report.lowered] == [("silu_mul", "triton")]
