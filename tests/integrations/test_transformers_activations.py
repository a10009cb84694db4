"""apply(model, activations=True): gated-MLP activations on opir ops, within tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import opir
from opir.integrations.transformers import (
    ACTIVATIONS_LEFT_ALONE,
    WITHIN_TOLERANCE,
    AppliedGatedMLP,
    apply,
    revert,
)
from opir.ops import gelu_mul, silu_and_mul, silu_mul

from .models import build

NATIVE = {
    op: ["native"]
    for op in (
        "rms_norm",
        "fused_add_rms_norm",
        "silu_mul",
        "gelu_mul",
        "silu_and_mul",
        # apply() also puts RoPE (and Qwen3's q/k norms + RoPE) on opir by default
        "rotary_pos_emb",
        "qk_norm_rotary_pos_emb",
    )
}
IDS_INPUT = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
# family -> (MLP class, opir op the probe picks)
MLPS = {
    "llama": ("LlamaMLP", "opir.ops.silu_mul"),
    "qwen3": ("Qwen3MLP", "opir.ops.silu_mul"),
    "phi3": ("Phi3MLP", "opir.ops.silu_and_mul"),
    "gemma": ("GemmaMLP", 'opir.ops.gelu_mul(approximate="tanh")'),
}
DTYPES = [torch.float32, torch.bfloat16]
CASES = [(f, d) for f in MLPS for d in DTYPES]
IDS = [f"{f}-{str(d).removeprefix('torch.')}" for f, d in CASES]


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
    return family, dtype, model, _logits(model)


def _composition(model, family):
    """A copy of ``model`` whose MLPs compute opir's native op on their own projections:
    what the applied model must equal with priority native (its norms are bit-exact)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if type(module).__name__ != MLPS[family][0]:
            continue
        if family == "phi3":
            fn = lambda x, m=module: m.down_proj(silu_and_mul(m.gate_up_proj(x)))  # noqa: E731
        elif family == "gemma":
            fn = lambda x, m=module: m.down_proj(  # noqa: E731
                gelu_mul(m.gate_proj(x), m.up_proj(x), "tanh")
            )
        else:
            fn = lambda x, m=module: m.down_proj(silu_mul(m.gate_proj(x), m.up_proj(x)))  # noqa: E731
        module.forward = fn
    return twin


def test_default_leaves_mlps_alone_with_the_reason(stock):
    family, _, model, _ = stock
    report = apply(model)
    try:
        cls = MLPS[family][0]
        assert report.activations == {}
        assert report.activations_left_alone == {cls: 2}
        assert not any(isinstance(m, AppliedGatedMLP) for m in model.modules())
        lines = [line for line in str(report).splitlines() if cls in line]
        assert len(lines) == 1 and ACTIVATIONS_LEFT_ALONE in lines[0]
    finally:
        revert(model)


def test_opt_in_replaces_mlps_within_tolerance_and_equals_native_composition(stock):
    family, dtype, model, logits = stock
    cls, op = MLPS[family]
    expected = _composition(model, family)
    report = apply(model, priority=NATIVE, activations=True)
    try:
        assert report.activations == {cls: (2, op)}, str(report)
        assert not report.left_alone and not report.activations_left_alone
        assert f"{cls}: 2 -> {op}, {WITHIN_TOLERANCE}" in str(report)
        mlps = [m for m in model.modules() if isinstance(m, AppliedGatedMLP)]
        assert len(mlps) == 2 and all(m.opir_op == op for m in mlps)
        got = _logits(model)
        with opir.priority(NATIVE):
            assert torch.equal(got, _logits(expected))
        tol = {"rtol": 0.05, "atol": 0.05} if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(got, logits, **tol)
    finally:
        revert(model)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_fp32_greedy_tokens_equal_stock(family):
    model = build(family, torch.float32)
    tokens = _generate(model)
    apply(model, activations=True)
    try:
        assert torch.equal(_generate(model), tokens)
    finally:
        revert(model)


def test_revert_restores_original_modules_and_state_dict(stock):
    _, _, model, logits = stock
    before = dict(model.named_modules())
    keys = list(model.state_dict())
    apply(model, activations=True)
    assert list(model.state_dict()) == keys  # the applied MLP shares the Linears
    mlp = next(m for m in model.modules() if isinstance(m, AppliedGatedMLP))
    assert mlp.down_proj is mlp.opir_original.down_proj
    assert revert(model) > 0
    assert dict(model.named_modules()) == before
    assert torch.equal(_logits(model), logits)
    assert revert(model) == 0


class _Tiny(nn.Module):
    def __init__(self, hidden=64, inter=128):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.act_fn = nn.SiLU()


class ActOnUp(_Tiny):
    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))


class ReLUSquared(_Tiny):
    def forward(self, x):
        return self.down_proj(torch.relu(self.gate_proj(x)) ** 2 * self.up_proj(x))


class ScaledOutput(_Tiny):
    def forward(self, x):
        return 2 * self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class StockSwiGLU(_Tiny):
    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Holder(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp


@pytest.mark.parametrize("cls", [ActOnUp, ReLUSquared, ScaledOutput], ids=lambda c: c.__name__)
def test_lookalike_computing_something_else_is_not_replaced(cls):
    model = Holder(cls()).eval()
    report = apply(model, activations=True)
    assert type(model.mlp) is cls
    assert report.activations == {}
    assert cls.__name__ in report.left_alone, str(report)


def test_stock_swiglu_is_replaced_and_runs_the_original_outside_the_envelope():
    model = Holder(StockSwiGLU()).eval()
    report = apply(model, activations=True)
    assert report.activations == {"StockSwiGLU": (1, "opir.ops.silu_mul")}
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.mlp(x), model.mlp.opir_original(x))
        assert not any(k[4] == 32 for k in model.mlp.opir_envelope)
        with pytest.raises(RuntimeError):  # an unverifiable width: the original raises
            model.mlp(torch.randn(3, 32))
    # Setting an attribute empties the envelope (verified again on next use) and reaches
    # the original.
    model.mlp.act_fn = nn.GELU()
    assert model.mlp.opir_envelope == {}
    assert model.mlp.opir_original.act_fn is model.mlp.act_fn
    with torch.no_grad():
        model.mlp(x)
    assert not any(model.mlp.opir_envelope.values())  # silu no longer matches: refused
    assert revert(model) == 1 and type(model.mlp) is StockSwiGLU


def test_deepcopy_pickle_and_bf16_after_apply():
    import io

    model = build("llama", torch.float32)
    apply(model, activations=True)
    for twin in (copy.deepcopy(model), _roundtrip(model, io)):
        mlp = twin.model.layers[0].mlp
        assert isinstance(mlp, AppliedGatedMLP)
        assert mlp.down_proj is mlp.opir_original.down_proj  # still shared in the copy
        torch.testing.assert_close(_logits(twin), _logits(model), rtol=0, atol=0)
    model.to(torch.bfloat16)  # an unseen key: verified on first use, within tolerance
    _logits(model)
    mlp = model.model.layers[0].mlp
    assert any(k[0] == torch.bfloat16 and ok for k, ok in mlp.opir_envelope.items())


def _roundtrip(model, io):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
