"""Whether the triton provider can run here, and why not. Imports nothing of Triton."""

from __future__ import annotations

import importlib.util
import os

from opir.core.platform import detect

_TRUE = ("1", "true", "yes", "on")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE
"""``TRITON_INTERPRET`` was set when opir was imported: kernels run in Triton's
CPU interpreter on CPU tensors (slow; for tests and debugging)."""

ON_CPU = INTERPRET
"""Predicates accept CPU tensors (interpreter) instead of CUDA/ROCm tensors."""


def _availability() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    if INTERPRET:
        return True, ""
    platform = detect()
    if platform.cuda or platform.rocm:
        return True, ""
    return False, (
        "no CUDA/ROCm GPU; set TRITON_INTERPRET=1 before importing opir to run the kernels "
        "in Triton's CPU interpreter"
    )


SUPPORTED, REASON = _availability()
