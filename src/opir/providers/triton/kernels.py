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

import torch
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
# --- quantisation (quant.py): one custom op per op, the functional form of the
# fused add ops (the in-place launchers write the residual into x_residual; their
# traceable form calls the functional custom op and copies the residual back)
from opir.ops import quant as _quant_ops  # noqa: E402
from opir.providers.triton import quant  # noqa: E402

static_quant = quant.static_quant
dynamic_quant = quant.dynamic_quant
dynamic_group_quant = quant.dynamic_group_quant
rms_norm_quant = quant.rms_norm_quant
rms_norm_dynamic_quant = quant.rms_norm_dynamic_quant
rms_norm_group_quant = quant.rms_norm_group_quant
fused_add_rms_norm_quant = quant.fused_add_rms_norm_quant
fused_add_rms_norm_dynamic_quant = quant.fused_add_rms_norm_dynamic_quant
silu_and_mul_quant = quant.silu_and_mul_quant
silu_and_mul_dynamic_quant = quant.silu_and_mul_dynamic_quant
all_reduce_rms_norm_quant = quant.all_reduce_rms_norm_quant
traceable_all_reduce_rms_norm_quant = quant.traceable_all_reduce_rms_norm_quant

for _quant_launcher in (
    quant.static_quant,
    quant.dynamic_quant,
    quant.dynamic_group_quant,
    quant.rms_norm_quant,
    quant.rms_norm_dynamic_quant,
    quant.rms_norm_group_quant,
    quant.silu_and_mul_quant,
    quant.silu_and_mul_dynamic_quant,
):
    define(
        NAMESPACE,
        getattr(_quant_ops, _quant_launcher.__name__),
        _traced(_quant_launcher, quant.traceable_kernel),
        definer=triton_op,
    )
define(
    NAMESPACE,
    _quant_ops.fused_add_rms_norm_quant,
    _traced(quant.add_rms_norm_quant, quant.traceable_kernel),
    definer=triton_op,
)
define(
    NAMESPACE,
    _quant_ops.fused_add_rms_norm_dynamic_quant,
    _traced(quant.add_rms_norm_dynamic_quant, quant.traceable_kernel),
    definer=triton_op,
)
del _quant_launcher


def traceable_fused_add_rms_norm_quant(*args):
    """The in-place impl as traced: the functional custom op, then the residual copied
    into the donated ``x_residual``."""
    q, residual = torch.ops.opir_triton.fused_add_rms_norm_quant.default(*args)
    args[1].copy_(residual)
    return q, args[1]


def traceable_fused_add_rms_norm_dynamic_quant(*args):
    q, scale, residual = torch.ops.opir_triton.fused_add_rms_norm_dynamic_quant.default(*args)
    args[1].copy_(residual)
    return q, scale, args[1]


# all_reduce_rms_norm_quant's local parts (after the collective), with variance_size


@triton_op("opir_triton::local_rms_norm_quant", mutates_args=())
def _local_rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    scale: torch.Tensor,
    dtype: torch.dtype,
    variance_size: int | None,
    weight_bias: float,
) -> torch.Tensor:
    return quant.rms_norm_quant_vs(
        x, weight, epsilon, scale, dtype, variance_size, weight_bias, quant.traceable_kernel
    )


@triton_op("opir_triton::local_add_rms_norm_quant", mutates_args=())
def _local_add_rms_norm_quant(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    scale: torch.Tensor,
    dtype: torch.dtype,
    variance_size: int | None,
    weight_bias: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return quant.add_rms_norm_quant_vs(
        x, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias,
        quant.traceable_kernel,
    )  # fmt: skip


@_local_rms_norm_quant.register_fake
def _(x, weight, epsilon, scale, dtype, variance_size, weight_bias):
    return torch.empty(x.shape, dtype=dtype, device=x.device)


@_local_add_rms_norm_quant.register_fake
def _(x, x_residual, weight, epsilon, scale, dtype, variance_size, weight_bias):
    return torch.empty(x.shape, dtype=dtype, device=x.device), torch.empty_like(x)


def scaled_mm(a, a_scale, b, b_scale, out_dtype, bias):
    """``torch._scaled_mm`` (cuBLASLt fp8 GEMM: fp32 accumulation, fp32 epilogue) for what
    ``quant_impls.supports_scaled_mm`` accepts; checked as the native checks."""
    _quant_ops.check_scaled_mm_args(a, a_scale, b, b_scale, out_dtype, bias)
    if a.shape[0] == 0 or a.shape[1] == 0:  # nothing to multiply: the native's answer
        return _quant_ops.scaled_mm.native(a, a_scale, b, b_scale, out_dtype, bias)
    return torch._scaled_mm(a, b, scale_a=a_scale, scale_b=b_scale, bias=bias, out_dtype=out_dtype)


define(NAMESPACE, _quant_ops.scaled_mm, scaled_mm, device_types="cuda")
