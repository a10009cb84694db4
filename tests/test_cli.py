"""The opir command."""

from __future__ import annotations

import subprocess
import sys

import pytest

import opir
from opir import cli


def test_info_lists_platform_ops_and_priorities(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for expected in ("torch", "2.13", "c++ compiler", "rms_norm", "fused_add_rms_norm", "native"):
        assert expected in out


def test_bench_dispatch_prints_every_candidate(capsys):
    assert cli.main(["bench", "dispatch", "--rounds", "3", "--number", "20"]) == 0
    out = capsys.readouterr().out
    for expected in ("inference_mode", "grad on", "op(...)", "op.torch_op(...)", "rejects"):
        assert expected in out
    assert "impl returns its input" in " ".join(out.split())
    assert "bench_dispatch_twin" not in opir.registry  # the transient op is gone


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "opir", "info"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "rms_norm" in done.stdout


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_build_command(capsys):
    assert cli.main(["build"]) == 0
    assert "cpu provider ready" in capsys.readouterr().out


def test_bench_kernels_short_prints_tables_targets_and_plot(capsys, tmp_path):
    plot = tmp_path / "k.png"
    args = ["bench", "kernels", "--short", "--rounds", "2", "--providers", "native,cpu"]
    assert cli.main([*args, "--plot", str(plot)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    for expected in ("rms_norm", "fused_add_rms_norm", "clone()", "copy_ into existing", "target:"):
        assert expected in out
    assert "cpu >= 3x faster than native on every shape" in out
    assert plot.stat().st_size > 10_000


@pytest.mark.slow
def test_bench_tp_spawns_two_ranks_and_reports(capsys):
    assert cli.main(["bench", "tp", "--rounds", "2", "--tokens", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for expected in ("shape check on", "shape check off", "all_reduce_rms_norm op"):
        assert expected in out


def test_importing_opir_does_not_load_inductor():
    code = "import sys, opir; print('torch._inductor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the compile pipeline loads on first use
