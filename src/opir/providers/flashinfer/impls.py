"""The ``flashinfer`` provider's predicates and impls (see the package docstring)."""

from __future__ import annotations

import functools
import importlib

import torch

from opir.distributed.group import tp_world_size
from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm
from opir.providers.flashinfer.availability import REASON, SUPPORTED
from opir.providers.kit import Provider

PROVIDER = Provider(
    "flashinfer",
    namespace="opir_flashinfer",
    availability=(SUPPORTED, REASON),
    load=lambda: importlib.import_module("opir.providers.flashinfer.kernels"),
    load_errors=(ImportError, OSError, RuntimeError),
)

_DTYPES = (torch.float16, torch.bfloat16)
_BIASES = (0.0, 1.0)


def supports_rms_norm(
    x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    # fp32_multiply: FlashInfer's kernels round the normalised value before the
    # weight multiply; the single-rounding contract is not theirs.
    if weight is None or variance_size is not None or weight_bias not in _BIASES or fp32_multiply:
        return False
    dtype = x.dtype
    return dtype in _DTYPES and x.is_cuda and weight.dtype is dtype and x.is_contiguous()


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    if weight is None or variance_size is not None or weight_bias not in _BIASES or fp32_multiply:
        return False
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cuda or weight.dtype is not dtype:
        return False
    return x.is_contiguous() and x_residual.is_contiguous() and x_residual.dtype is dtype


@functools.cache
def _fused_all_reduce_available(world: int) -> bool:
    """FlashInfer has the unified fusion API and this world size's GPUs reach each other."""
    if world not in (2, 4, 8) or torch.cuda.device_count() < world:
        return False
    try:
        from flashinfer import comm
    except ImportError:
        return False
    if not hasattr(comm, "allreduce_fusion") or not hasattr(comm, "AllReduceFusionPattern"):
        return False
    can = torch.cuda.can_device_access_peer
    return all(can(a, b) for a in range(world) for b in range(world) if a != b)


def supports_all_reduce_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0
) -> bool:
    if weight is None or x_residual is None or variance_size is not None:
        return False
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cuda or weight.dtype is not dtype:
        return False
    if weight_bias not in _BIASES or x_residual.dtype is not dtype:
        return False
    if not (x.is_contiguous() and x_residual.is_contiguous()):
        return False
    return _fused_all_reduce_available(tp_world_size())


PROVIDER.register(rms_norm, supports_rms_norm)
PROVIDER.register(fused_add_rms_norm, supports_fused_add_rms_norm, inplace=True)
PROVIDER.register(all_reduce_rms_norm, supports_all_reduce_rms_norm)
