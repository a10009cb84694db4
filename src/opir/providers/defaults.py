"""Measured default priorities per platform (DESIGN §4: measured, not guessed).

Eager mode on a CPU-only machine: the ``cpu`` C++ kernels first, ``native``
last. ``inductor`` is deliberately not in the eager default: its first call
per dtype compiles for seconds, which an eager caller never asked for; list it
explicitly to use it. Numbers: README, "opir bench kernels".

Compiled (``opir.compile``) on a CPU-only machine: ``native`` for the two norms
measured by ``opir bench compile``: Inductor fuses their decomposition with the
neighbouring adds and casts, which the opaque ``cpu`` kernel prevents (0.99-1.01x
plain torch.compile vs 1.02-1.10x). Ops not in that table (``rms_norm_gated``)
use the eager order until measured.
"""

from __future__ import annotations

from opir.core.platform import detect
from opir.core.registry import set_platform_defaults

CPU_EAGER = {
    "rms_norm": ["cpu", "native"],
    "fused_add_rms_norm": ["cpu", "native"],
    "rms_norm_gated": ["cpu", "native"],
}


CPU_COMPILE = {
    "rms_norm": ["native"],
    "fused_add_rms_norm": ["native"],
}


def apply() -> None:
    """Install the tables that fit this machine."""
    if not detect().has_gpu:
        set_platform_defaults(CPU_EAGER)
        set_platform_defaults(CPU_COMPILE, mode="compile")
