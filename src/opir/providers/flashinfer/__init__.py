"""The optional ``flashinfer`` provider (``pip install 'opir[flashinfer]'``, NVIDIA GPUs).

``rms_norm`` -> ``rmsnorm`` / ``gemma_rmsnorm`` (``weight_bias`` 0.0 / 1.0),
``fused_add_rms_norm`` -> ``fused_add_rmsnorm`` / ``gemma_fused_add_rmsnorm``
(in place, like opir's donating overload), ``all_reduce_rms_norm`` -> the
TensorRT-LLM fused all-reduce + residual + RMSNorm (``weight_bias`` 1.0 for
Gemma). FlashInfer is imported on the first call, never by ``import opir``.

Limits the predicates state (anything else falls through to the next
provider): CUDA tensors in fp16 or bf16, contiguous; a weight of x's dtype
(FlashInfer reads it as the input type, so Gemma's fp32 weight is not taken);
``weight_bias`` 0.0 or 1.0; no ``variance_size``; a weight is required. The
all-reduce additionally needs a residual, an initialised TP group of 2, 4 or 8
ranks whose GPUs all reach each other by peer access (NVLink/NVSwitch), and
FlashInfer's unified ``allreduce_fusion`` API; calls larger than the
workspace budget (``kernels.MAX_FUSED_BYTES``) run the unfused native path
inside the impl, so the predicate never depends on the token count.

Rounding differs from opir's contract (held to the op tolerance, see
docs/gpu-providers.md): with a weight of x's dtype FlashInfer rounds once
(contract: round, multiply, round), and ``gemma_fused_add_rmsnorm`` normalises
the sum after rounding it to x's dtype (contract: the unrounded fp32 sum).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from opir.core.platform import detect
from opir.distributed.group import tp_world_size
from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm


def _availability() -> tuple[bool, str]:
    if importlib.util.find_spec("flashinfer") is None:
        return False, "flashinfer is not installed (pip install 'opir[flashinfer]')"
    if not detect().cuda:
        return False, "no NVIDIA CUDA GPU (FlashInfer's kernels are CUDA only)"
    return True, ""


SUPPORTED, REASON = _availability()

_DTYPES = (torch.float16, torch.bfloat16)
_BIASES = (0.0, 1.0)


def supports_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0) -> bool:
    if weight is None or variance_size is not None or weight_bias not in _BIASES:
        return False
    dtype = x.dtype
    return dtype in _DTYPES and x.is_cuda and weight.dtype is dtype and x.is_contiguous()


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0
) -> bool:
    if weight is None or variance_size is not None or weight_bias not in _BIASES:
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
    x, x_residual, weight, epsilon, weight_bias=0.0, variance_size=None
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


_kernels = None


def _load():
    global _kernels
    from opir.providers.flashinfer import kernels

    _kernels = kernels
    return kernels


def custom_ops():
    """``torch.ops.opir_flashinfer``: the calls as traceable custom ops."""
    _load()
    return torch.ops.opir_flashinfer


def _eager_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0):
    return (_kernels or _load()).rms_norm(x, weight, epsilon, weight_bias)


@rms_norm.register_impl(
    "flashinfer",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_rms_norm,
    eager=_eager_rms_norm,
)
def flashinfer_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> torch.Tensor:
    return custom_ops().rms_norm.default(x, weight, epsilon, weight_bias)


def _eager_fused_add_rms_norm(x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0):
    (_kernels or _load()).fused_add_rms_norm_(x, x_residual, weight, epsilon, weight_bias)
    return x, x_residual


@fused_add_rms_norm.register_impl(
    "flashinfer",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_fused_add_rms_norm,
    inplace=True,
    eager=_eager_fused_add_rms_norm,
)
def flashinfer_fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    custom_ops().fused_add_rms_norm_.default(x, x_residual, weight, epsilon, weight_bias)
    return x, x_residual


def _eager_all_reduce_rms_norm(x, x_residual, weight, epsilon, weight_bias=0.0, variance_size=None):
    return (_kernels or _load()).all_reduce_rms_norm(x, x_residual, weight, epsilon, weight_bias)


@all_reduce_rms_norm.register_impl(
    "flashinfer",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_all_reduce_rms_norm,
    eager=_eager_all_reduce_rms_norm,
)
def flashinfer_all_reduce_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    weight_bias: float = 0.0,
    variance_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return custom_ops().all_reduce_rms_norm.default(x, x_residual, weight, epsilon, weight_bias)


# The activation impls (all their glue is in that file).
from opir.providers.flashinfer.activation_impls import register as _register_activations  # noqa: E402

_register_activations(SUPPORTED, REASON)
