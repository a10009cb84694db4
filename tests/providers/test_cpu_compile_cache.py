"""A graph lowered to a cpu kernel runs in a later process served from Inductor's disk cache.

Inductor's cached code calls ``torch.ops.opir_cpu.*`` before anything has asked
for the extension; the ops are defined in Python at import and load the
extension on first call, so the second process must get the same answer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import torch, opir
from opir.ops import fused_add_rms_norm, rms_norm_gated

def body(x, r, g, w):
    out, res = fused_add_rms_norm(x * 2, r, w, 1e-6)
    return rms_norm_gated(out, g, w, 1e-6, 4) + res

compiled = opir.compile(body, options={"priority": {"fused_add_rms_norm": ["cpu"],
                                                     "rms_norm_gated": ["cpu"]}})
gen = torch.Generator().manual_seed(0)
x, r, g = (torch.randn(3, 8, generator=gen) for _ in range(3))
w = torch.randn(8, generator=gen)
got = compiled(x, r, g, w)
torch.testing.assert_close(got, body(x, r, g, w))
print(repr(got.sum().item()))
"""


@pytest.mark.slow
def test_second_process_runs_the_cached_graph(tmp_path):
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "OPIR_CACHE_DIR": os.environ.get("OPIR_CACHE_DIR", str(tmp_path / "opir")),
    }
    env.pop("OPIR_PRIORITY", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600
        )
        for _ in range(2)
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
    assert runs[0].stdout == runs[1].stdout
    assert any((tmp_path / "inductor").rglob("*.py"))  # Inductor really cached code
