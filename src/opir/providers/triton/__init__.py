"""The ``triton`` provider: Triton kernels for the whole RMSNorm family.

Supported on CUDA/ROCm GPUs, and on a CPU-only machine when ``TRITON_INTERPRET=1``
is set before ``import opir``: then the predicates accept CPU tensors and the
same kernels run in Triton's interpreter (slow; how the tests prove them).
Triton itself is imported on the first call, never by ``import opir``.

What the kernels cover — anything else is rejected by ``supports_args`` and
falls through to the next provider: x in fp32, bf16 or fp16 on the provider's
device (CUDA/ROCm, or CPU under the interpreter); a weight (and gate) of any of
those dtypes; the last dim contiguous (rows may be strided, leading dims
arbitrary); any ``weight_bias``, ``variance_size`` and ``group_size``; any
number of rows, including zero. Inputs invalid for every provider (wrong weight
length or device, residual of another shape or dtype, out-of-range sizes) pass
the predicates and are rejected by the ops' own checks with a clear message.

Eager calls launch the kernels directly (no torch dispatcher); while a dispatch
mode is active (make_fx, FakeTensor, the compile lowering) the impls call
``torch.ops.opir_triton.*`` instead, which are ``triton_op`` custom ops, so
lowering records one node per kernel and Inductor can see the Triton kernel.
The kernels never synchronise with the host and the predicates read only
tensor metadata, so both are safe inside CUDA graph capture.
"""

from __future__ import annotations

import torch

from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm, rms_norm_gated

# The activation impls register themselves on import (all their glue is in that file).
from opir.providers.triton import activation_impls  # noqa: F401
from opir.providers.triton.config import INTERPRET, KERNEL_DTYPES, ON_CPU, REASON, SUPPORTED

__all__ = ["INTERPRET", "REASON", "SUPPORTED"]

_DTYPES = KERNEL_DTYPES
_CPU = ON_CPU


# Predicates read as few tensor attributes as possible (they run on every
# call); ``t.is_contiguous() or t.stride(-1) == 1`` also accepts 0-d tensors,
# which the ops' own checks then reject with a clear message.


def supports_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if not (x_residual.is_contiguous() or x_residual.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


def supports_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False
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
    x, x_residual, weight, epsilon, weight_bias=0.0, variance_size=None
) -> bool:
    if x.dtype not in _DTYPES or not (x.is_cpu if _CPU else x.is_cuda):
        return False
    if x_residual is not None and not (x_residual.is_contiguous() or x_residual.stride(-1) == 1):
        return False
    return weight is None or weight.dtype in _DTYPES


# Kernel modules are imported on first use (importing Triton takes a while).
_norm = None
_gated = None
_all_reduce = None


def _load():
    global _norm, _gated, _all_reduce
    from opir.providers.triton import all_reduce, gated, norm

    _norm, _gated, _all_reduce = norm, gated, all_reduce
    return norm


def kernels():
    """``torch.ops.opir_triton``: the kernels as traceable custom ops."""
    _load()
    return torch.ops.opir_triton


def _eager_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0):
    return (_norm or _load()).rms_norm(x, weight, epsilon, variance_size, weight_bias)


@rms_norm.register_impl(
    "triton",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_rms_norm,
    eager=_eager_rms_norm,
)
def triton_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> torch.Tensor:
    """Traceable: the kernel as a ``triton_op`` (Inductor sees the Triton kernel)."""
    return kernels().rms_norm.default(x, weight, epsilon, variance_size, weight_bias)


def _eager_fused_add_rms_norm(x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0):
    (_norm or _load()).fused_add_rms_norm_(
        x, x_residual, weight, epsilon, variance_size, weight_bias
    )
    return x, x_residual


@fused_add_rms_norm.register_impl(
    "triton",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_fused_add_rms_norm,
    inplace=True,
    eager=_eager_fused_add_rms_norm,
)
def triton_fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    kernels().fused_add_rms_norm_.default(
        x, x_residual, weight, epsilon, variance_size, weight_bias
    )
    return x, x_residual


def _eager_rms_norm_gated(x, gate, weight, epsilon, group_size=None, norm_before_gate=False):
    if _gated is None:
        _load()
    return _gated.rms_norm_gated(x, gate, weight, epsilon, group_size, norm_before_gate)


@rms_norm_gated.register_impl(
    "triton",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_rms_norm_gated,
    eager=_eager_rms_norm_gated,
)
def triton_rms_norm_gated(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    return kernels().rms_norm_gated.default(x, gate, weight, epsilon, group_size, norm_before_gate)


def _all_reduce_rms_norm(traceable: bool):
    def run(x, x_residual, weight, epsilon, weight_bias=0.0, variance_size=None):
        if _all_reduce is None:
            _load()
        return _all_reduce.all_reduce_rms_norm(
            x, x_residual, weight, epsilon, weight_bias, variance_size, traceable
        )

    return run


_eager_all_reduce_rms_norm = _all_reduce_rms_norm(traceable=False)
_traced_all_reduce_rms_norm = _all_reduce_rms_norm(traceable=True)


@all_reduce_rms_norm.register_impl(
    "triton",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_all_reduce_rms_norm,
    eager=_eager_all_reduce_rms_norm,
)
def triton_all_reduce_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    weight_bias: float = 0.0,
    variance_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _traced_all_reduce_rms_norm(x, x_residual, weight, epsilon, weight_bias, variance_size)
