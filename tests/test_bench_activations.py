"""``opir bench activations``: the table it prints, and how it reports a missing vLLM."""

from __future__ import annotations

import importlib.util

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
