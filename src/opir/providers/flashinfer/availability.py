"""Whether the flashinfer provider can run here, and why not. Imports nothing of FlashInfer."""

from __future__ import annotations

import importlib.util

from opir.core.platform import detect


def _availability() -> tuple[bool, str]:
    if importlib.util.find_spec("flashinfer") is None:
        return False, "flashinfer is not installed (pip install 'opir[flashinfer]')"
    if not detect().cuda:
        return False, "no NVIDIA CUDA GPU (FlashInfer's kernels are CUDA only)"
    return True, ""


SUPPORTED, REASON = _availability()
