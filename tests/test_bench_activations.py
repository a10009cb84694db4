"""``opir bench activations``: the table it prints, and how it reports a missing vLLM."""

from __future__ import annotations

import importlib.util
import statistics

import pytest

from opir.bench import activations
from opir.cli import main


def test_short_run_prints_every_op_and_dtype(capsys):
    assert main(["bench", "activations", "--short", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("silu_and_mul bf16: opir == native: True", "gelu_tanh_and_mul", "float32"):
        assert line in out
    assert "1x3072" in out and "256x3072" in out


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_is_reported_not_raised(capsys):
    loaded, why = activations.load_vllm()
    assert not loaded and "vllm package is not installed" in why
    assert activations.main(vllm=True, short=True, rounds=1) == 1
    assert "could not be loaded" in capsys.readouterr().out


def test_kernels_benchmark_times_the_activation_rows():
    """`opir bench kernels`' activation rows: every case, the bytes a [t, 2d] -> [t, d]
    op moves, a copy and each provider timed, cpu ahead of the fp64 native function."""
    import dataclasses

    from opir.bench import kernels

    family = dataclasses.replace(kernels.ACTIVATIONS, tokens=(4,), hidden=(256,))
    results = kernels.run(families=[family], providers=("native", "cpu"), rounds=3)
    assert [(r.op, r.variant) for r in results] == [
        ("silu_and_mul", "bf16"),
        ("silu_and_mul", "fp32"),
        ("gelu_and_mul", "bf16, approximate=none"),
        ("gelu_and_mul", "fp32, approximate=none"),
        ("gelu_and_mul", "bf16, approximate=tanh"),
        ("gelu_and_mul", "fp32, approximate=tanh"),
    ]
    for r in results:
        size = 2 if r.variant.startswith("bf16") else 4
        assert r.family == "activation" and (r.tokens, r.hidden) == (4, 256)
        assert r.bytes_moved == 4 * 3 * 256 * size  # read 2d, write d per token
        assert set(r.median_us) == {kernels.COPY, "native", "cpu"}
        assert all(0 < us < 1e5 for us in r.median_us.values())
    # native computes in fp64; a median over rows, as a loaded machine stalls single rows
    assert statistics.median(r.speedup("cpu") for r in results) > 1.0


def test_both_benchmarks_build_the_same_cases():
    from opir.bench import kernels

    cases = [(c.op.name, c.inputs) for c in kernels.ACTIVATIONS.cases]
    assert cases == [(name, kw) for name, kw, _ in activations.OPS]
    assert (kernels.ACTIVATIONS.tokens, kernels.ACTIVATIONS.hidden) == (
        activations.TOKENS,
        activations.INTERMEDIATE,
    )
