"""Families the probe used to refuse for want of a contract (issue 14): "multiply in
fp32, round once" with a 16-bit weight, T5-style norms in bf16, gated norms storing
``n_groups``, weightless norms. Covered means bit-identical logits to stock in fp32 and
bf16 with priority native, every norm class replaced."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from opir.integrations.transformers import apply, revert

from .models import COVERAGE, build, build_t5, check_rotary

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
IDS = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
DTYPES = [torch.float32, torch.bfloat16]


def _check(stock, model, **inputs):
    report = apply(model, priority=NATIVE)
    assert report.total_replaced > 0 and not report.left_alone, str(report)
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, stock(**inputs).logits)
    return report


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", COVERAGE)
def test_family_is_covered_bit_exactly(family, dtype):
    model = build(family, dtype)
    report = _check(copy.deepcopy(model), model, input_ids=IDS)
    check_rotary(family, report)
    revert(model)
    if family == "falcon_h1":
        assert report.replaced["FalconH1RMSNormGated"][1] == "RMSNormGated"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_t5_is_covered_in_both_dtypes(dtype):
    model = build_t5(dtype)
    report = _check(copy.deepcopy(model), model, input_ids=IDS, decoder_input_ids=IDS)
    assert report.replaced["T5LayerNorm"] == (7, "RMSNorm")
    # A 16-bit T5 norm returns the weight's dtype for fp32 x; opir returns x's: that key
    # stays unverified and such a call runs the original forward.
    if dtype == torch.bfloat16:
        norm = model.encoder.final_layer_norm
        x = torch.randn(3, 64)
        assert norm(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.RMSNorm(64, elementwise_affine=False),
        lambda: nn.RMSNorm(64, eps=1e-6, elementwise_affine=False),
        lambda: nn.RMSNorm(64, eps=1e-6),
    ],
    ids=["weightless-finfo-eps", "weightless", "affine"],
)
def test_torch_rms_norm(make, dtype):
    model = nn.Sequential(make()).to(dtype).eval()
    stock = copy.deepcopy(model)
    report = apply(model, priority=NATIVE)
    x = torch.randn(2, 5, 64).to(dtype)
    with torch.no_grad():
        assert torch.equal(model(x), stock(x))
    assert report.replaced == {"RMSNorm": (1, "RMSNorm")}
