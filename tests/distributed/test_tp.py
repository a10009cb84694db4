"""Tensor parallelism on 2 and 4 gloo ranks against single-process references."""

from __future__ import annotations

import time

import pytest
import torch
from rank_checks import (
    HIDDEN,
    dies_before_all_reduce,
    everything,
    never_joined,
    raises_before_all_reduce,
)

from opir.distributed import shard, tp_rank, tp_world_size
from opir.distributed.launch import run_on_ranks as run_ranks
from opir.layers import Mixer2RMSNormGated

pytestmark = pytest.mark.slow

GROUPS = {2: (1, 2, 3, 4), 4: (1, 2, 3, 4, 8)}
EXPECTED_CASE = {  # (world, groups) -> TPNormCase value
    (2, 1): 1, (2, 2): 4, (2, 3): 3, (2, 4): 4,
    (4, 1): 1, (4, 2): 3, (4, 3): 3, (4, 4): 4, (4, 8): 4,
}  # fmt: skip


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def ranks(request):
    world = request.param
    results = run_ranks(world, everything, GROUPS[world], (torch.float32, torch.bfloat16))
    failed = {r: v for r, (status, v) in results.items() if status != "ok"}
    assert not failed, f"ranks failed: {failed}"
    return world, {r: v for r, (_, v) in results.items()}


def test_mixer2_every_case_matches_single_process(ranks):
    world, results = ranks
    for rank, result in results.items():
        for (groups, dtype), (case, diff, ok) in result["mixer2"].items():
            assert case == EXPECTED_CASE[(world, groups)], (rank, groups)
            assert ok, f"rank {rank} groups {groups} {dtype}: max diff {diff}"
    cases = {case for r in results.values() for case, _, _ in r["mixer2"].values()}
    assert cases == {1, 3, 4}


def test_fused_op_and_helper_match_the_unfused_path(ranks):
    _, results = ranks
    for rank, result in results.items():
        for key, checks in result["fused"].items():
            assert all(checks.values()), f"rank {rank} {key}: {checks}"
    assert {k[:2] for r in results.values() for k in r["fused"]} == {
        ("RMSNorm", False), ("RMSNorm", True), ("GemmaRMSNorm", False), ("GemmaRMSNorm", True)
    }  # fmt: skip


def test_all_reduce_rms_norm_quant_is_the_unfused_sequence(ranks):
    world, results = ranks
    for rank, result in results.items():
        quant = result["quant"]
        cases = {k: v for k, v in quant.items() if isinstance(k, tuple)}
        assert len(cases) == 16
        for key, checks in cases.items():
            assert all(checks.values()), f"rank {rank} {key}: {checks}"
        assert "all_reduce_rms_norm_quant: dtype must be one of" in quant["bad_dtype"]
        assert quant["after_error"] == [float(world)] * 2


def test_compile_pass_fuses_with_gemma_bias_and_respects_dtype_guard(ranks):
    _, results = ranks
    for rank, result in results.items():
        compiled = result["compile"]
        assert compiled["fusions"].get("all_reduce_fused_add_rms_norm") == 1, compiled
        assert compiled["fusions"].get("all_reduce_add_rms_norm") == 1, compiled
        assert "all_reduce_rms_norm" not in compiled["fusions"], compiled  # blocked by the guard
        assert compiled["weight_biases"] == [0.0, 1.0]  # RMSNorm, then Gemma with raw weight
        assert compiled["ops"].count("rms_norm") == 1  # the guarded norm stayed unfused
        assert compiled["close"], f"rank {rank}: compiled vs eager max diff {compiled['max_diff']}"


def test_shape_mismatch_is_a_clear_error_on_every_rank(ranks):
    _, results = ranks
    for rank, result in results.items():
        assert "ranks disagree on the tensor's shape/dtype" in result["mismatch"], result[
            "mismatch"
        ]
        assert f"rank {rank} has [{3 + rank}]" in result["mismatch"]


def test_dtype_and_every_dim_are_checked(ranks):
    world, results = ranks
    for rank, result in results.items():
        for key in ("int8_vs_uint8", "beyond_8_dims", "gather_beyond_8_dims"):
            assert "ranks disagree on the tensor's shape/dtype" in result[key], (rank, key)
        assert result["same_9_dims_sum"] == [float(world)] * 2
        assert (
            "init_tp" in result["wrong_tp_size"]
            and f"tp_size={2 * world}" in result["wrong_tp_size"]
        )


# The multi-process tests below must pass on a busy 2-core machine every time:
# ranks fail only after the group is formed (rank_checks._group_formed), the
# survivor's wait is measured inside the survivor (process start-up under load
# can take many seconds and says nothing about release times), and whole-run
# bounds are generous but finite (the launcher kills stragglers at its deadline).


def test_peer_that_raises_releases_the_survivor_quickly():
    results = run_ranks(2, raises_before_all_reduce, tp_timeout=30)
    assert results[1][0] == "error" and "rank 1 failed on purpose" in results[1][1]
    status, value = results[0]
    assert status == "ok", value
    message, waited = value
    assert message.startswith("all_reduce failed on rank 0 of 2"), message
    assert waited < 20, f"survivor held {waited:.1f}s (collective timeout is 30s)"


def test_dead_rank_gives_a_clear_error_quickly():
    results = run_ranks(2, dies_before_all_reduce, tp_timeout=20)
    status, value = results[0]
    assert status == "ok", value
    message, waited = value
    assert message.startswith("all_reduce failed on rank 0 of 2") and "peer rank" in message
    assert waited < 40, f"survivor held {waited:.1f}s (collective timeout is 20s)"


def test_rank_that_never_joins_times_out_with_a_clear_error():
    start = time.monotonic()
    results = run_ranks(2, never_joined, ranks=[0], tp_timeout=5)
    status, message = results[0]
    assert status == "error", message
    assert "TPError: rank 0 of 2 could not join the TP group within 5s" in message
    assert time.monotonic() - start < 150  # start-up under load, then the 5 s limit


def test_without_a_group_everything_is_world_size_one():
    assert (tp_world_size(), tp_rank()) == (1, 0)
    x = torch.randn(3, 8)
    assert torch.equal(opir_all_reduce(x), x)
    layer = Mixer2RMSNormGated(HIDDEN, 1)
    assert layer.tp_case == 2 and layer.hidden_size == HIDDEN


def opir_all_reduce(x):
    from opir.distributed import all_reduce

    return all_reduce(x)


def test_bad_tp_layout_is_a_clear_error_at_construction():
    from opir.distributed import TPError

    with pytest.raises(TPError, match=r"tp_size=2.*init_tp"):
        Mixer2RMSNormGated(64, 1, tp_size=2, tp_rank=0)  # would all-reduce with no group
    with pytest.raises(TPError, match=r"tp_size=2.*init_tp"):
        Mixer2RMSNormGated(96, 3, tp_size=2, tp_rank=0)  # would all-gather with no group
    local = Mixer2RMSNormGated(64, 2, tp_size=2, tp_rank=1)  # groups are local: no collective
    assert local.tp_case.name == "LOCAL_GROUPS"
    with pytest.raises(ValueError, match="tp_size must be a positive int"):
        Mixer2RMSNormGated(64, 1, tp_size=0, tp_rank=0)
    for rank in (-1, 2):
        with pytest.raises(ValueError, match=r"tp_rank must be an int in \[0, 2\)"):
            Mixer2RMSNormGated(64, 2, tp_size=2, tp_rank=rank)


@pytest.mark.parametrize("value", ["abc", "inf", "nan", "-1", "0"])
def test_bad_tp_timeout_names_the_variable(monkeypatch, value):
    from opir.distributed import TPError, init_tp

    monkeypatch.setenv("OPIR_TP_TIMEOUT", value)
    with pytest.raises(TPError, match=r"\$OPIR_TP_TIMEOUT must be a positive finite number"):
        init_tp(0, 1, init_method="file:///nonexistent/never-used")


def test_hidden_size_not_divisible_by_world_size():
    with pytest.raises(ValueError, match=r"not divisible by the tensor-parallel world size \(3\)"):
        Mixer2RMSNormGated(64, 1, tp_size=3, tp_rank=0)
    with pytest.raises(ValueError, match="64 is not divisible by 3"):
        shard(torch.ones(64), 0, 3)


def test_torchrun_example_agrees_on_every_rank():
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    example = Path(__file__).parents[2] / "examples" / "tp_demo.py"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(example)],
        capture_output=True,
        text=True,
        timeout=400,  # two processes importing torch on a loaded 2-core machine
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert len(lines) == 2 * 5 and all(line.endswith("OK") for line in lines), done.stdout
