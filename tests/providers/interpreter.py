"""Run a triton test file again in a subprocess with TRITON_INTERPRET=1.

The triton provider reads TRITON_INTERPRET when opir is imported, so the
interpreter run needs a fresh process; the normal run calls this once per file.
On a whole-suite run ``tests/conftest.py`` starts these processes at collection
(``start``), so they use the second core while the other tests run, and the
test only waits for its file's result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
_STARTED: dict[str, tuple[subprocess.Popen[bytes], IO[str]]] = {}


def start(test_file: str) -> None:
    """Start ``test_file``'s interpreter run in the background (once)."""
    key = str(Path(test_file).resolve())
    if key in _STARTED:
        return
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", key]
    # a file, not a pipe: a full pipe would block the run; closed with the process
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    _STARTED[key] = (proc, log)


def run_in_interpreter(test_file: str, timeout: float) -> None:
    """Run ``test_file`` under the Triton interpreter (or wait for the run ``start``
    began); every test must pass, none skip."""
    pytest.importorskip("triton", reason="triton is a test dependency: pip install triton")
    start(test_file)
    proc, log = _STARTED[str(Path(test_file).resolve())]
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    log.seek(0)
    out = log.read()
    assert code == 0, f"interpreter run failed (exit {code}):\n{out[-6000:]}"
    assert " passed" in out and " skipped" not in out, out[-2000:]
