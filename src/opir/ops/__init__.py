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
from opir.ops.all_reduce_norm import all_reduce_rms_norm, all_reduce_rms_norm_quant
from opir.ops.norms import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.ops.quant import (
    dynamic_group_quant,
    dynamic_quant,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm_dynamic_quant,
    rms_norm_group_quant,
    rms_norm_quant,
    scaled_mm,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.ops.rotary import qk_norm_rope, qk_norm_rotary_pos_emb, rotary_embedding, rotary_pos_emb

__all__ = [
    "all_reduce_rms_norm",
    "all_reduce_rms_norm_quant",
    "dynamic_group_quant",
    "dynamic_quant",
    "fatrelu_and_mul",
    "fused_add_rms_norm",
    "fused_add_rms_norm_dynamic_quant",
    "fused_add_rms_norm_quant",
    "gelu_and_mul",
    "gelu_and_mul_sparse",
    "gelu_mul",
    "mul_and_silu",
    "qk_norm_rope",
    "qk_norm_rotary_pos_emb",
    "rms_norm",
    "rms_norm_dynamic_quant",
    "rms_norm_gated",
    "rms_norm_group_quant",
    "rms_norm_quant",
    "rotary_embedding",
    "rotary_pos_emb",
    "scaled_mm",
    "silu_and_mul",
    "silu_and_mul_dynamic_quant",
    "silu_and_mul_quant",
    "silu_mul",
    "static_quant",
    "swigluoai_and_mul",
]
