"""Run a triton test file again in a subprocess with TRITON_INTERPRET=1.

The triton provider reads TRITON_INTERPRET when opir is imported, so the
interpreter run needs a fresh process; the normal run calls this once per file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_in_interpreter(test_file: str, timeout: float) -> None:
    """Run ``test_file`` under the Triton interpreter; every test must pass, none skip."""
    pytest.importorskip("triton", reason="triton is a test dependency: pip install triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"interpreter run failed:\n{done.stdout[-6000:]}{done.stderr}"
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
