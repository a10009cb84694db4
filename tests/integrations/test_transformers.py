"""opir.integrations.transformers on tiny random-weight models of every covered family."""

from __future__ import annotations

import copy

import pytest
import torch

import opir
from opir.integrations.transformers import ApplyReport, apply, revert
from opir.layers import GemmaRMSNorm, RMSNorm, RMSNormGated

from .models import FAMILIES, build, check_rotary

NATIVE = {
    op: ["native"]
    for op in (
        "rms_norm",
        "fused_add_rms_norm",
        "rms_norm_gated",
        "rotary_pos_emb",
        "qk_norm_rotary_pos_emb",
    )
}
DTYPES = [torch.float32, torch.bfloat16]
CASES = [(f, d) for f in FAMILIES for d in DTYPES]
IDS = [f"{f}-{str(d).removeprefix('torch.')}" for f, d in CASES]
IDS_INPUT = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))

# (family, dtype) -> a class apply's probe leaves alone there. None today: OLMo-2 in
# bf16 (multiply in fp32, round once) is covered by the ops' fp32_multiply.
LEFT_ALONE: dict[tuple[str, torch.dtype], str] = {}


def _logits(model):
    with torch.inference_mode():
        return model(IDS_INPUT).logits


def _generate(model):
    with torch.inference_mode():
        return model.generate(IDS_INPUT, max_new_tokens=16, do_sample=False, min_new_tokens=16)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def stock(request):
    family, dtype = request.param
    model = build(family, dtype)
    return family, dtype, model, _logits(model), _generate(model)


def test_native_is_bit_identical_and_generates_the_same_tokens(stock):
    family, dtype, model, logits, tokens = stock
    report = apply(model, priority=NATIVE)
    try:
        if (family, dtype) in LEFT_ALONE:
            assert report.total_replaced == 0
            assert LEFT_ALONE[family, dtype] in report.left_alone
        else:
            assert report.total_replaced > 0 and not report.left_alone, str(report)
        check_rotary(family, report)  # RoPE (and q/k norms) on opir too
        assert torch.equal(_logits(model), logits)
        assert torch.equal(_generate(model), tokens)
    finally:
        revert(model)


def test_default_priority_within_tolerance(stock):
    _, dtype, model, logits, tokens = stock
    apply(model)
    try:
        tol = {"rtol": 0.05, "atol": 0.05} if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(_logits(model), logits, **tol)
        assert torch.equal(_generate(model), tokens)
    finally:
        revert(model)


def test_revert_restores_stock_modules_and_logits(stock):
    _, _, model, logits, _ = stock
    before = {name: m for name, m in model.named_modules()}
    apply(model)
    assert revert(model) >= 0
    assert {name: m for name, m in model.named_modules()} == before
    assert torch.equal(_logits(model), logits)
    assert revert(model) == 0  # idempotent


def test_weights_loaded_after_apply_are_used(stock):
    family, dtype, model, logits, _ = stock
    if (family, dtype) in LEFT_ALONE:  # nothing replaced: the stock modules stay
        apply(model)
        assert not any(isinstance(m, RMSNorm) for m in model.modules())
        revert(model)
        return
    state = copy.deepcopy(model.state_dict())
    apply(model, priority=NATIVE)
    try:
        norm_keys = [k for k in state if "norm" in k and state[k].dim() == 1]
        with torch.no_grad():
            for k in norm_keys:
                model.get_parameter(k).data.copy_(state[k] * 2 + 0.5)
        changed = _logits(model)
        assert not torch.equal(changed, logits)
        model.load_state_dict(state)
        assert torch.equal(_logits(model), logits)
        revert(model)
        with torch.no_grad():  # the same writes on the stock model give the same logits
            for k in norm_keys:
                model.get_parameter(k).data.copy_(state[k] * 2 + 0.5)
        assert torch.equal(_logits(model), changed)
    finally:
        revert(model)
        model.load_state_dict(state)


def test_parameters_are_shared_not_copied():
    model = build("gemma3", torch.float32)
    params = {id(p) for p in model.parameters()}
    apply(model)
    assert {id(p) for p in model.parameters()} == params
    assert all(not k.startswith("_opir") for k in model.state_dict())


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("qwen3", {"Qwen3RMSNorm": (9, "RMSNorm")}),  # 2 layers x (in, post, q, k) + final
        ("gemma3", {"Gemma3RMSNorm": (13, "GemmaRMSNorm")}),
        ("mamba2", {"Mamba2RMSNorm": (3, "RMSNorm"), "MambaRMSNormGated": (2, "RMSNormGated")}),
        (
            "qwen3_next",
            {"Qwen3NextRMSNorm": (7, "GemmaRMSNorm"), "Qwen3NextRMSNormGated": (1, "RMSNormGated")},
        ),
    ],
)
def test_report_counts_per_class(family, expected):
    model = build(family, torch.bfloat16)
    report = apply(model)
    assert report.replaced == expected and not report.left_alone
    text = str(report)
    for cls, (n, layer) in expected.items():
        assert f"{cls}: {n} -> opir.layers.{layer}" in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    assert "replaced by opir.layers" in console.export_text()


def test_layers_chosen_carry_the_hf_semantics():
    model = build("mamba2", torch.float32)
    apply(model)
    mixer_norm = model.backbone.layers[0].mixer.norm
    assert isinstance(mixer_norm, RMSNormGated) and not mixer_norm.norm_before_gate
    assert mixer_norm.group_size == 64  # intermediate 128 over n_groups 2
    model = build("qwen3_next", torch.float32)
    apply(model)
    assert any(isinstance(m, RMSNormGated) and m.norm_before_gate for m in model.modules())
    assert any(isinstance(m, GemmaRMSNorm) for m in model.modules())


def test_olmo2_bf16_is_covered_by_fp32_multiply():
    model = build("olmo2", torch.bfloat16)
    report = apply(model)
    assert report.replaced == {"Olmo2RMSNorm": (9, "RMSNorm")} and not report.left_alone
    assert model.model.norm.opir_original.__class__.__name__ == "Olmo2RMSNorm"
    assert all(m._opir_spec.fp32_multiply for m in model.modules() if hasattr(m, "_opir_spec"))


class UnknownRMSNorm(torch.nn.Module):
    """Norm-like by name, but adds 0.5 to the output: no opir layer computes this."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (self.weight * y.to(x.dtype) + 0.5).to(x.dtype)


class NoEpsRMSNorm(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.weight


def test_unknown_norm_like_classes_are_left_alone_with_reasons():
    model = torch.nn.Sequential(UnknownRMSNorm(8), NoEpsRMSNorm(8), torch.nn.Linear(8, 8))
    report = apply(model)
    assert report.total_replaced == 0
    assert "numerics differ" in report.left_alone["UnknownRMSNorm"][1]
    assert "epsilon" in report.left_alone["NoEpsRMSNorm"][1]
    assert isinstance(model[0], UnknownRMSNorm) and isinstance(model[1], NoEpsRMSNorm)


def test_apply_twice_replaces_nothing_more_and_priority_is_scoped():
    model = build("llama", torch.float32)
    apply(model, priority=NATIVE)
    assert apply(model).total_replaced == 0
    norm = model.model.norm
    assert isinstance(norm, RMSNorm)
    with opir.trace() as trace, torch.inference_mode():
        norm(torch.randn(2, 64))
    assert [r.provider for r in trace.records] == ["native"]


def test_report_is_a_dataclass_with_text():
    report = ApplyReport()
    assert "replaced 0" in str(report)


class PlainLayerNorm(torch.nn.Module):
    """Not named like a norm, but has weight + variance_epsilon: probed, and it is no RMSNorm."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.weight, None, 1e-6)


def test_norm_like_by_attributes_is_probed():
    report = apply(torch.nn.Sequential(PlainLayerNorm(8)))
    assert "numerics differ" in report.left_alone["PlainLayerNorm"][1]
