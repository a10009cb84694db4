"""Measured default priorities per platform (DESIGN §4: measured, not guessed).

Eager mode on a CPU-only machine: the ``cpu`` C++ kernels first, ``native``
last. ``inductor`` is deliberately not in the eager default: its first call
per dtype compiles for seconds, which an eager caller never asked for; list it
explicitly to use it. Numbers: README, "opir bench kernels".
"""

from __future__ import annotations

from opir.core.chain import set_platform_defaults
from opir.core.platform import detect

CPU_EAGER = {
    "rms_norm": ["cpu", "native"],
    "fused_add_rms_norm": ["cpu", "native"],
    "rms_norm_gated": ["cpu", "native"],
}


def apply() -> None:
    """Install the table that fits this machine."""
    if not detect().has_gpu:
        set_platform_defaults(CPU_EAGER)
