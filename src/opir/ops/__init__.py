"""Op definitions. Importing this package registers every built-in op."""

from opir.ops.norms import fused_add_rms_norm, rms_norm, rms_norm_gated

__all__ = ["fused_add_rms_norm", "rms_norm", "rms_norm_gated"]
