"""The inductor provider against native; one compile serves all token counts.

Each argument kind (dtypes, None-ness, float values) costs one Inductor
compile, so this matrix is smaller than the cpu one but covers every op,
dtype and weight variant.
"""

from __future__ import annotations

import pytest
import torch
from conformance import assert_matches_native

from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers import inductor

pytestmark = pytest.mark.slow

KINDS = [
    (torch.float32, {}),
    (torch.bfloat16, {"weight_dtype": torch.float32}),
    (torch.float16, {"has_weight": False}),
]


@pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm, rms_norm_gated], ids=lambda o: o.name)
@pytest.mark.parametrize(("dtype", "variant"), KINDS, ids=["fp32", "bf16-fp32w", "fp16-noweight"])
def test_matches_native_across_shapes(op, dtype, variant):
    for tokens, hidden in [(7, 769), (83, 4096), (1, 8), (0, 768)]:
        args = op.sample_inputs(dtype=dtype, num_tokens=tokens, hidden_size=hidden, **variant)
        assert_matches_native(op, "inductor", args)


def test_variance_size_and_groups():
    args = rms_norm.sample_inputs(num_tokens=7, hidden_size=769, variance_size=64)
    assert_matches_native(rms_norm, "inductor", args)
    args = rms_norm_gated.sample_inputs(num_tokens=7, hidden_size=1024, group_size=256)
    assert_matches_native(rms_norm_gated, "inductor", args)


def test_token_counts_do_not_recompile():
    compiled = inductor.compiled["rms_norm"]
    counters = torch._dynamo.utils.counters["stats"]
    args = rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=7, hidden_size=512)
    with rms_norm.set_priority(["inductor"]):
        rms_norm(*args)
        graphs = counters["unique_graphs"]
        kinds = len(compiled.compiled)
        for tokens in (2, 83, 4096, 300):
            rms_norm(
                *rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=tokens, hidden_size=512)
            )
    assert counters["unique_graphs"] == graphs
    assert len(compiled.compiled) == kinds
