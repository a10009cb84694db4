"""Op definitions. Importing this package registers every built-in op."""

from opir.ops.all_reduce_norm import all_reduce_rms_norm
from opir.ops.norms import fused_add_rms_norm, rms_norm, rms_norm_gated

__all__ = ["all_reduce_rms_norm", "fused_add_rms_norm", "rms_norm", "rms_norm_gated"]
