"""Op definitions. Importing this package registers every built-in op."""

from opir.ops.activations import (
    fatrelu_and_mul,
    gelu_and_mul,
    gelu_and_mul_sparse,
    gelu_mul,
    mul_and_silu,
    silu_and_mul,
    silu_mul,
    swigluoai_and_mul,
)
from opir.ops.all_reduce_norm import all_reduce_rms_norm
from opir.ops.norms import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.ops.rotary import qk_norm_rope, qk_norm_rotary_pos_emb, rotary_embedding, rotary_pos_emb

__all__ = [
    "all_reduce_rms_norm",
    "fatrelu_and_mul",
    "fused_add_rms_norm",
    "gelu_and_mul",
    "gelu_and_mul_sparse",
    "gelu_mul",
    "mul_and_silu",
    "qk_norm_rope",
    "qk_norm_rotary_pos_emb",
    "rms_norm",
    "rms_norm_gated",
    "rotary_embedding",
    "rotary_pos_emb",
    "silu_and_mul",
    "silu_mul",
    "swigluoai_and_mul",
]
