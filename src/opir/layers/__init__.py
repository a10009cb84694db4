"""nn.Modules built on opir ops (inference layers: weights do not require grad)."""

from opir.layers.norms import GemmaRMSNorm, Mixer2RMSNormGated, RMSNorm, RMSNormGated

__all__ = ["GemmaRMSNorm", "Mixer2RMSNormGated", "RMSNorm", "RMSNormGated"]
