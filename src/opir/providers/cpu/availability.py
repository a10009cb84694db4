"""Whether the cpu provider can run on this machine, and why not (no C++ compiler, other ISA)."""

from __future__ import annotations

import platform

from opir.core.platform import detect

_ARCHES = ("x86_64", "AMD64", "aarch64", "arm64")


def _availability() -> tuple[bool, str]:
    if platform.machine() not in _ARCHES:
        return False, f"CPU architecture {platform.machine()} is not x86-64 or arm64"
    if detect().cxx is None:
        return False, "no C++ compiler found (install g++ or set CXX)"
    return True, ""


SUPPORTED, REASON = _availability()
