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


# --- reliability (issue 9) -------------------------------------------------------------


def test_bad_input_raises_the_native_error():
    x = torch.randn(4, 8)
    with rms_norm.set_priority(["inductor"]), pytest.raises(ValueError, match="weight must have"):
        rms_norm(x, torch.ones(7), 1e-6)


def test_nan_epsilon_is_one_kind_not_one_per_call():
    compiled = inductor.compiled["rms_norm"]
    x = torch.randn(4, 8)
    with rms_norm.set_priority(["inductor"]):
        rms_norm(x, None, float("nan"))
        before = len(compiled.compiled)
        for _ in range(3):
            out = rms_norm(x, None, float("nan"))
    assert len(compiled.compiled) == before
    assert torch.isnan(out).all()


@pytest.mark.slow
def test_many_layouts_and_ranks_never_hit_the_recompile_limit():
    shapes = [(8,), (4, 8), (1, 8), (0, 8), (2, 4, 8), (3, 1, 8), (2, 2, 4, 8), (2, 3, 4, 5, 8)]
    with rms_norm.set_priority(["inductor"]):
        for shape in shapes:
            for transposed in (False, True):
                x = torch.randn(*shape)
                if transposed and x.dim() >= 2:
                    x = x.transpose(0, -1)
                w = torch.randn(x.shape[-1])
                torch.testing.assert_close(
                    rms_norm(x, w, 1e-6), rms_norm.native(x, w, 1e-6), atol=1e-5, rtol=1.3e-6
                )


def test_kinds_are_bounded(monkeypatch):
    monkeypatch.setattr(inductor, "MAX_KINDS", 2)
    compiled = inductor.CompiledNative(rms_norm)
    x = torch.randn(2, 8)
    for eps in (1e-6, 1e-5, 1e-4):
        torch.testing.assert_close(compiled(x, None, eps, None, 0.0), rms_norm.native(x, None, eps))
    assert len(compiled.compiled) == 2


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [None, 8])
def test_transposed_x_with_contiguous_gate_matches_native(group_size):
    # torch 2.13's Inductor normalises x * silu(gate) wrongly (errors of 10-70) when x is
    # transposed and the gate is not; the provider feeds contiguous inputs to step around it.
    x = torch.randn(64, 8).t()
    gate = torch.randn(8, 64)
    w = torch.randn(64)
    with rms_norm_gated.set_priority(["inductor"]):
        got = rms_norm_gated(x, gate, w, 1e-6, group_size)
    torch.testing.assert_close(got, rms_norm_gated.native(x, gate, w, 1e-6, group_size))


def test_ops_registered_later_get_the_provider(make_op):
    def later(x: torch.Tensor, alpha: float) -> torch.Tensor:
        return x * alpha + 1

    op = make_op(later)
    assert "inductor" in op.impls
    with op.set_priority(["inductor"]):
        torch.testing.assert_close(op(torch.ones(3), 2.0), torch.full((3,), 3.0))


@pytest.mark.slow
def test_quant_ops_match_native_and_each_dtype_is_its_own_kind():
    from opir.ops import dynamic_quant, rms_norm_dynamic_quant

    compiled = inductor.compiled["dynamic_quant"]
    kinds: dict[torch.dtype, set] = {}
    for qdtype in (torch.int8, torch.float8_e4m3fn):
        for tokens in (7, 33):  # the second token count reuses the kind's compile
            args = dynamic_quant.sample_inputs(
                dtype=torch.bfloat16, num_tokens=tokens, hidden_size=96, quant_dtype=qdtype
            )
            assert_matches_native(dynamic_quant, "inductor", args)
            kinds.setdefault(qdtype, set()).add(inductor._kind(dynamic_quant.complete_args(args)))
    # (other tests compile other kinds into the same process-wide table: compare keys)
    assert [len(k) for k in kinds.values()] == [1, 1]  # token counts share a compile
    assert kinds[torch.int8] != kinds[torch.float8_e4m3fn]  # the quant dtype is in the key
    assert all(k <= set(compiled.compiled) for k in kinds.values())
    # a fused op's fp8 output is compared in fp32 within its one-step tolerance
    args = rms_norm_dynamic_quant.sample_inputs(
        dtype=torch.float16, quant_dtype=torch.float8_e4m3fnuz
    )
    assert_matches_native(rms_norm_dynamic_quant, "inductor", args)
