"""``opir check``: the example plugin package installs and passes; a wrong plugin fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opir import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "opir-example-provider"

WRONG_PLUGIN = '''
"""A plugin whose rms_norm divides by the mean absolute value instead of the rms."""
import torch
from opir.ops import rms_norm


@rms_norm.register_impl("wrong")
def wrong_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    y = x.float() / (x.float().abs().mean(-1, keepdim=True) + epsilon)
    return (y if weight is None else y * weight).to(x.dtype)
'''


def test_unknown_provider_is_one_line_listing_the_valid_ones(capsys):
    assert cli.main(["check", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown provider 'nope'" in err and "cpu" in err and "inductor" in err


def test_unknown_op_is_one_line_listing_the_provider_ops(capsys):
    assert cli.main(["check", "cpu", "--op", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown op 'nope'" in err and "rms_norm_gated" in err


def test_json_report_of_one_op(capsys):
    assert cli.main(["check", "cpu", "--op", "rms_norm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provider"] == "cpu" and report["ok"] is True
    statuses = {o["check"]: o["status"] for o in report["outcomes"]}
    assert {o["op"] for o in report["outcomes"]} == {"rms_norm"}
    assert statuses["native"] == statuses["layouts"] == statuses["compile"] == "pass"
    assert statuses["inplace"] == "skip"


def _install(site: Path, tmp_path: Path) -> None:
    """pip-install a copy of the example (building in place would leave build/ in the repo),
    and a hand-made distribution of the wrong plugin, into ``site``."""
    source = tmp_path / "example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--target", str(site), str(source)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (site / "wrong_opir_plugin.py").write_text(textwrap.dedent(WRONG_PLUGIN))
    dist = site / "wrong_opir_plugin-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wrong-opir-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[opir.providers]\nwrong = wrong_opir_plugin\n")


@pytest.mark.slow
def test_example_plugin_passes_and_a_wrong_plugin_fails(tmp_path):
    site = tmp_path / "site"
    _install(site, tmp_path)
    env = {**os.environ, "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(ROOT / "src")]))

    def opir_check(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "opir", "check", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    good = opir_check("example")
    assert good.returncode == 0, good.stdout + good.stderr
    rows = [line for line in good.stdout.splitlines() if "│" in line]
    checks = ("native", "layouts", "zero_rows", "bad_inputs", "fake", "compile", "random")
    for check in checks:
        assert any(check in row and " pass " in row for row in rows), (check, good.stdout)
    assert "FAIL" not in good.stdout

    wrong = opir_check("wrong", "--json")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    outcomes = {o["check"]: o for o in json.loads(wrong.stdout)["outcomes"]}
    assert outcomes["native"]["status"] == "fail"
    assert "not close" in outcomes["native"]["detail"]


@pytest.mark.slow
def test_triton_rms_norm_passes_in_the_interpreter():
    """``TRITON_INTERPRET=1 opir check triton --op rms_norm`` (~25 s): among others the
    bad epsilons (None, "1e-6") raise native's TypeError, not the interpreter's error."""
    pytest.importorskip("triton", reason="triton is a test dependency: pip install triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "opir", "check", "triton", "--op", "rms_norm", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    outcomes = {o["check"]: o for o in json.loads(done.stdout)["outcomes"]}
    assert outcomes["bad_inputs"]["status"] == "pass", outcomes["bad_inputs"]
