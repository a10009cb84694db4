"""nn.Modules built on opir ops (inference layers: weights do not require grad)."""

from opir.layers.norms import GemmaRMSNorm, RMSNorm, RMSNormGated
from opir.layers.tp import Mixer2RMSNormGated, TPNormCase, fused_allreduce_rms_norm

__all__ = [
    "GemmaRMSNorm",
    "Mixer2RMSNormGated",
    "RMSNorm",
    "RMSNormGated",
    "TPNormCase",
    "fused_allreduce_rms_norm",
]
