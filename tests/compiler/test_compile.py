"""opir.compile: equal to eager, fusion, lowering, donation, clones, caching."""

from __future__ import annotations

import pytest
import torch
from models import Decoder

import opir
from opir.compiler import DonationError
from opir.ops import fused_add_rms_norm, rms_norm

pytestmark = pytest.mark.slow


def _inputs(tokens=5, hidden=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(tokens, hidden, generator=g).to(dtype),
        torch.randn(tokens, hidden, generator=g).to(dtype),
    )


def _eager(model, x, residual):
    with torch.no_grad():
        return model(x.clone(), residual.clone())


def _providers(compiled) -> set[str]:
    """Providers chosen for the Llama-style norms (the cpu kernels may not take
    GemmaRMSNorm's weight_bias; eager dispatch decides there)."""
    return {e.provider for e in compiled.opir_report.last.lowered if "Gemma" not in e.module}


@pytest.fixture(scope="module")
def fp32_model():
    torch.manual_seed(0)
    return Decoder().eval()


CPU_KERNELS = {"rms_norm": ["cpu"], "fused_add_rms_norm": ["cpu"]}


@pytest.fixture(scope="module")
def compiled_no_inductor(fp32_model):
    torch._dynamo.reset()
    return opir.compile(fp32_model, options={"inductor": False}, dynamic=True)


@pytest.fixture(scope="module")
def compiled_inductor(fp32_model):
    return opir.compile(fp32_model, options={"priority": CPU_KERNELS}, dynamic=True)


@pytest.mark.parametrize("path", ["compiled_no_inductor", "compiled_inductor"])
def test_matches_eager_and_reports(path, fp32_model, request):
    compiled = request.getfixturevalue(path)
    x, residual = _inputs()
    x0, residual0 = x.clone(), residual.clone()
    with torch.no_grad():
        got = compiled(x, residual)
    # in-place kernels never write into inputs the caller did not donate (Inductor
    # drops clones in functional graphs: lowering runs after its passes)
    assert torch.equal(x, x0) and torch.equal(residual, residual0)
    torch.testing.assert_close(got, _eager(fp32_model, x, residual), atol=2e-5, rtol=2e-5)
    report = compiled.opir_report.last
    assert report.fusions == {"add_rms_norm": 2}
    assert report.opir_nodes_left == 0
    # 2 fused add+norm + 2 maybe_inplace (now default) calls, all fused_add_rms_norm
    assert [e.op for e in report.lowered] == ["fused_add_rms_norm"] * 4
    expected = "cpu" if path == "compiled_inductor" else "native"  # fixed vs compile default
    # the cpu kernels may not take GemmaRMSNorm's weight_bias: eager dispatch decides there
    assert {e.provider for e in report.lowered if "Gemma" not in e.module} == {expected}
    assert "fused_add_rms_norm" in str(compiled.opir_report)


def test_inductor_with_norms_lowered_to_native(fp32_model):
    """Native impls are traced into decomposed ATen that Inductor fuses; a fixed
    per-model priority wins over the priority in effect."""
    x, residual = _inputs()
    torch._dynamo.reset()
    fixed = {"fused_add_rms_norm": ["native"], "rms_norm": ["native"]}
    compiled = opir.compile(fp32_model, options={"priority": fixed})
    with torch.no_grad(), opir.priority({"fused_add_rms_norm": ["cpu"]}):
        got = compiled(x.clone(), residual.clone())
    assert {p for _, p in compiled.opir_report.providers()} == {"native"}
    torch.testing.assert_close(got, _eager(fp32_model, x, residual), atol=2e-5, rtol=2e-5)


def test_dynamic_tokens_compile_once(fp32_model):
    torch._dynamo.reset()
    compiled = opir.compile(fp32_model, options={"inductor": False}, dynamic=True)
    for tokens in (3, 7, 19):
        x, residual = _inputs(tokens)
        with torch.no_grad():
            got = compiled(x.clone(), residual.clone())
        torch.testing.assert_close(got, _eager(fp32_model, x, residual), atol=2e-5, rtol=2e-5)
    assert len(compiled.opir_report.graphs) == 1


def test_clone_counts(fp32_model):
    torch._dynamo.reset()
    compiled = opir.compile(fp32_model, options={"inductor": False, "priority": CPU_KERNELS})
    x, residual = _inputs()
    with torch.no_grad():
        compiled(x.clone(), residual.clone())
    report = compiled.opir_report.last
    # First fused node reads graph inputs x and residual (not donated): 2 clones
    # stay. Every later in-place kernel writes into buffers the graph owns.
    in_place = sum(1 for e in report.lowered if e.provider == "cpu")  # Gemma's may be native
    assert (report.clones_removed, report.clones_kept) == (2 * in_place - 2, 2)


def test_lowering_agrees_with_eager_dispatch_and_follows_priority(fp32_model):
    x, residual = _inputs()
    for priority in (["native"], ["cpu", "native"]):
        torch._dynamo.reset()
        with opir.priority({"fused_add_rms_norm": priority, "rms_norm": priority}):
            compiled = opir.compile(fp32_model, options={"inductor": False})
            with torch.no_grad():
                compiled(x.clone(), residual.clone())
            eager_choice = fused_add_rms_norm.dispatch(x, residual, None, 1e-6).provider
        assert _providers(compiled) == {eager_choice}
        assert eager_choice == priority[0]


def test_priority_change_recompiles_instead_of_reusing(fp32_model):
    torch._dynamo.reset()
    compiled = opir.compile(fp32_model, options={"inductor": False})
    x, residual = _inputs()
    with torch.no_grad():
        compiled(x.clone(), residual.clone())
        assert _providers(compiled) == {"native"}  # compile default
        fused_add_rms_norm.set_default(["cpu"])
        try:
            got = compiled(x.clone(), residual.clone())
            assert _providers(compiled) == {"cpu"}
            assert len(compiled.opir_report.graphs) == 2
        finally:
            fused_add_rms_norm.set_default([])
    torch.testing.assert_close(got, _eager(fp32_model, x, residual), atol=2e-5, rtol=2e-5)


def test_new_impl_recompiles(make_op):
    op = make_op(rms_norm.native, name="test_compile_scale_norm")
    torch._dynamo.reset()
    compiled = opir.compile(lambda x, w: op(x, w, 1e-6) * 2, options={"inductor": False})
    x, w = torch.randn(4, 8), torch.ones(8)
    compiled(x, w)
    assert compiled.opir_report.providers() == [(op.name, "native")]

    @op.register_impl("spy")
    def spy(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        epsilon: float,
        variance_size: int | None = None,
        weight_bias: float = 0.0,
        fp32_multiply: bool = False,
    ) -> torch.Tensor:
        return rms_norm.native(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    op.set_default(["spy"])
    compiled(x, w)
    assert compiled.opir_report.providers() == [(op.name, "spy")]


def test_donated_tensor_used_afterwards_is_a_compile_error():
    norm = opir.layers.RMSNorm(16)

    def misuse(x, residual):
        out, _ = norm(x, residual)  # donates x
        return out + x  # reads the donated x

    torch._dynamo.reset()
    compiled = opir.compile(misuse, options={"inductor": False})
    with pytest.raises(Exception, match=r"donated to fused_add_rms_norm\.maybe_inplace") as info:
        compiled(torch.randn(2, 16), torch.randn(2, 16))
    text = str(info.value)
    assert "'x' is donated" in text and "used afterwards" in text
    assert "Clone it before the call" in text
    assert isinstance(getattr(info.value, "inner_exception", info.value), DonationError)


def test_donated_graph_inputs_are_recorded_and_reused():
    norm = opir.layers.RMSNorm(16)
    torch._dynamo.reset()
    options = {"inductor": False, "priority": CPU_KERNELS}
    compiled = opir.compile(lambda x, r: norm(x, r), options=options)
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    expected = fused_add_rms_norm.native(x, r, norm.weight, 1e-6)
    with torch.no_grad():
        out, res = compiled(x, r)
    report = compiled.opir_report.last
    assert len(report.donated_inputs) == 2  # x and r are graph inputs the user donated
    assert report.clones_removed == 2 and report.clones_kept == 0
    torch.testing.assert_close((out, res), expected)


def test_bf16_compiled_within_tolerance():
    torch.manual_seed(1)
    model = Decoder(dtype=torch.bfloat16).eval()
    x, residual = _inputs(dtype=torch.bfloat16)
    torch._dynamo.reset()
    compiled = opir.compile(model, options={"inductor": False})
    with torch.no_grad():
        got = compiled(x.clone(), residual.clone())
    expected = _eager(model, x, residual)
    # the fused add+norm normalises the unrounded fp32 sum: bf16 rounding only
    tol = rms_norm.tolerance(torch.bfloat16)
    torch.testing.assert_close(got, expected, atol=4 * tol.atol + 2e-2, rtol=tol.rtol)


def test_bad_backend_options_are_clear_errors():
    with pytest.raises(TypeError, match=r"unknown opir.backend option\(s\) \['inductr'\]"):
        opir.backend(inductr=False)
    with pytest.raises(opir.PriorityError, match="unknown provider"):
        opir.backend(priority={"rms_norm": ["cuda"]})


def test_compile_mode_defaults_differ_from_eager_as_measured():
    assert fused_add_rms_norm.get_priority() == ["cpu", "native"]
    assert fused_add_rms_norm.compile_priority().providers == ["native"]
    with opir.priority({"fused_add_rms_norm": ["cpu"]}):  # a user priority applies to both
        assert fused_add_rms_norm.compile_priority().providers == ["cpu", "native"]


def test_torch_compile_mode_is_accepted_and_ignored_with_a_warning_without_inductor():
    torch._dynamo.reset()
    backend = opir.backend(inductor=False)
    compiled = torch.compile(
        lambda x: rms_norm(x, None, 1e-6), backend=backend, mode="max-autotune"
    )
    with pytest.warns(UserWarning, match="ignores torch.compile's mode='max-autotune'"):
        compiled(torch.randn(2, 8))
    assert backend.report.last.mode is None


def test_grad_through_a_compiled_opir_op_is_refused_not_dropped():
    """A compiled graph whose inputs require grad (a model called without no_grad):
    opir ops have no backward, so compiling refuses with opir's message. Before,
    the refusal node was disconnected from the inputs and AOTAutograd silently
    produced no gradient for the linear layer in front of the norm."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    norm = opir.layers.RMSNorm(16)
    compiled = opir.compile(lambda x: norm(linear(x)), options={"inductor": False})
    with torch.enable_grad(), pytest.raises(Exception, match="inference op"):
        compiled(torch.randn(3, 16))
    with torch.no_grad():  # the forward itself is fine without autograd
        out = compiled(torch.randn(3, 16))
    assert not out.requires_grad


@pytest.mark.slow
def test_lowered_natives_round_where_eager_rounds():
    """Natives that round in bf16 between steps (rms_norm with a bf16 weight: round,
    multiply, round; the rotary products) come out of opir.compile + Inductor bit for
    bit as eager, because opir.compile turns on Inductor's emulate_precision_casts."""
    from opir.ops import rotary_embedding

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 64, generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(64, generator=g)).bfloat16()
    positions, q, k, head_size, cache, neox = rotary_embedding.sample_inputs(
        dtype=torch.bfloat16, num_tokens=7, seed=3
    )[:6]

    def model(x, q, k):
        return rms_norm(x, w, 1e-6), *rotary_embedding(positions, q, k, head_size, cache, neox)

    with opir.priority({"rms_norm": ["native"], "rotary_embedding": ["native"]}):
        want = model(x, q, k)
        torch._dynamo.reset()
        got = opir.compile(model, fullgraph=True, dynamic=False)(x, q, k)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
