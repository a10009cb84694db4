"""The triton kernels' launchers by op name, and ``torch.ops.opir_triton.*``.

Imported on the first call (importing Triton takes a while), never by
``import opir``. The custom ops are ``triton_op``s with the norm ops' own
schemas and fakes (``kit.define``), so lowering records one node per kernel
and Inductor sees the Triton kernel inside. ``fused_add_rms_norm`` is the
functional form (new outputs; the local part of the all-reduce op),
``fused_add_rms_norm_`` the in-place one.
"""

from __future__ import annotations

from torch.library import triton_op

from opir.ops import fused_add_rms_norm as _fused_add_op
from opir.ops import rms_norm as _rms_norm_op
from opir.ops import rms_norm_gated as _gated_op
from opir.providers.kit import define
from opir.providers.triton import all_reduce, gated, norm

NAMESPACE = "opir_triton"

rms_norm = norm.rms_norm
fused_add_rms_norm = norm.fused_add_rms_norm_
rms_norm_gated = gated.rms_norm_gated
all_reduce_rms_norm = all_reduce.all_reduce_rms_norm
traceable_all_reduce_rms_norm = all_reduce.traceable_all_reduce_rms_norm


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
