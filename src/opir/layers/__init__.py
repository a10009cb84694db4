"""nn.Modules built on opir ops (inference layers: weights do not require grad)."""

from opir.layers import tp as _tp
from opir.layers.norms import GemmaRMSNorm, RMSNorm, RMSNormGated
from opir.layers.quant import QuantLinear
from opir.layers.tp import Mixer2RMSNormGated, TPNormCase, fused_all_reduce_rms_norm

__all__ = [
    "GemmaRMSNorm",
    "Mixer2RMSNormGated",
    "QuantLinear",
    "RMSNorm",
    "RMSNormGated",
    "TPNormCase",
    "fused_all_reduce_rms_norm",
]


def __getattr__(name: str) -> object:
    """Deprecated names, for one release (``fused_allreduce_rms_norm``)."""
    return _tp.__getattr__(name)
