"""The ``triton`` provider's predicates and impls, registered on the norm ops.

Eager calls launch the kernels directly (no torch dispatcher); while a
dispatch mode is active (make_fx, FakeTensor, the compile lowering) the impls
call ``torch.ops.opir_triton.*`` (``kernels.py``). The kernels module, hence
Triton, is imported on the first call, under the kit's load-failure policy.
"""

from __future__ import annotations

import importlib

import torch

from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers.kit import Provider
from opir.providers.triton.availability import ON_CPU, REASON, SUPPORTED

PROVIDER = Provider(
    "triton",
    namespace="opir_triton",
    availability=(SUPPORTED, REASON),
    load=lambda: importlib.import_module("opir.providers.triton.kernels"),
    load_errors=(ImportError, RuntimeError),
)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CPU = ON_CPU

# Predicates read as few tensor attributes as possible (they run on every
# call); ``t.is_contiguous() or t.stride(-1) == 1`` also accepts 0-d tensors,
# which the ops' own checks then reject with a clear message.


def supports_rms_norm(
    x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if not (x_residual.is_contiguous() or x_residual.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False, fp32_multiply=False
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if gate is not None and (
        gate.dtype not in _DTYPES or not (gate.is_contiguous() or gate.stride(-1) == 1)
    ):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_all_reduce_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if x_residual is not None and not (x_residual.is_contiguous() or x_residual.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


PROVIDER.register(rms_norm, supports_rms_norm)
PROVIDER.register(fused_add_rms_norm, supports_fused_add_rms_norm, inplace=True)
PROVIDER.register(rms_norm_gated, supports_rms_norm_gated)
PROVIDER.register(
    all_reduce_rms_norm,
    supports_all_reduce_rms_norm,
    traceable="traceable_all_reduce_rms_norm",  # the collective, then the custom ops
)
