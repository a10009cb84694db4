"""The triton kernels' launchers by op name, and ``torch.ops.opir_triton.*``.

Imported on the first call (importing Triton takes a while), never by
``import opir``. The custom ops are ``triton_op``s with the ops' own schemas
and fakes (``kit.define``), so lowering records one node per kernel and
Inductor sees the Triton kernel inside. ``fused_add_rms_norm`` is the
functional form (new outputs; the local part of the all-reduce op),
``fused_add_rms_norm_`` the in-place one. The activation ops' launchers are
``activation.py``'s, one kernel for all of them; the rotary ops' are ``rotary.py``'s
(``rotary_embedding`` and ``qk_norm_rope`` are the in-place launchers, as their impls
are in place; ``torch.ops.opir_triton.<op>`` is the functional form, ``<op>_`` the
in-place one).
"""

from __future__ import annotations

from torch.library import triton_op

from opir.ops import activations as _activation_ops
from opir.ops import fused_add_rms_norm as _fused_add_op
from opir.ops import rms_norm as _rms_norm_op
from opir.ops import rms_norm_gated as _gated_op
from opir.ops import rotary as _rotary_ops
from opir.providers.kit import define
from opir.providers.triton import activation, all_reduce, gated, norm, rotary

NAMESPACE = "opir_triton"

rms_norm = norm.rms_norm
fused_add_rms_norm = norm.fused_add_rms_norm_
rms_norm_gated = gated.rms_norm_gated
all_reduce_rms_norm = all_reduce.all_reduce_rms_norm
traceable_all_reduce_rms_norm = all_reduce.traceable_all_reduce_rms_norm

silu_and_mul = activation.silu_and_mul
mul_and_silu = activation.mul_and_silu
gelu_and_mul = activation.gelu_and_mul
fatrelu_and_mul = activation.fatrelu_and_mul
gelu_and_mul_sparse = activation.gelu_and_mul_sparse
swigluoai_and_mul = activation.swigluoai_and_mul
silu_mul = activation.silu_mul
gelu_mul = activation.gelu_mul

rotary_embedding = rotary.rotary_embedding_
qk_norm_rope = rotary.qk_norm_rope_
rotary_pos_emb = rotary.rotary_pos_emb
qk_norm_rotary_pos_emb = rotary.qk_norm_rotary_pos_emb


def _traced(fn, kernel):
    def run(*args):
        return fn(*args, kernel=kernel)

    return run


define(NAMESPACE, _rms_norm_op, _traced(norm.rms_norm, norm.traceable_kernel), definer=triton_op)
define(
    NAMESPACE,
    _fused_add_op,
    _traced(norm.fused_add_rms_norm_, norm.traceable_kernel),
    inplace=True,
    definer=triton_op,
)
define(
    NAMESPACE, _fused_add_op, _traced(norm.add_rms_norm, norm.traceable_kernel), definer=triton_op
)
define(
    NAMESPACE, _gated_op, _traced(gated.rms_norm_gated, gated.traceable_kernel), definer=triton_op
)
for _launcher in (
    silu_and_mul,
    mul_and_silu,
    gelu_and_mul,
    fatrelu_and_mul,
    gelu_and_mul_sparse,
    swigluoai_and_mul,
    silu_mul,
    gelu_mul,
):  # each launcher is named like its op
    define(
        NAMESPACE,
        getattr(_activation_ops, _launcher.__name__),
        _traced(_launcher, activation.traceable_kernel),
        definer=triton_op,
    )
del _launcher

for _name in ("rotary_embedding", "qk_norm_rope"):  # functional and in-place custom ops
    _op = getattr(_rotary_ops, _name)
    for _fn, _inplace in ((getattr(rotary, _name), False), (getattr(rotary, _name + "_"), True)):
        define(
            NAMESPACE,
            _op,
            _traced(_fn, rotary.traceable_kernel),
            inplace=_inplace,
            definer=triton_op,
        )
for _name in ("rotary_pos_emb", "qk_norm_rotary_pos_emb"):
    define(
        NAMESPACE,
        getattr(_rotary_ops, _name),
        _traced(getattr(rotary, _name), rotary.traceable_kernel),
        definer=triton_op,
    )
del _name, _op, _fn, _inplace
