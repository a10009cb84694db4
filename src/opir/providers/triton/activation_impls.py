"""The ``triton`` provider's activation impls: predicates and registration only.

All of the activation glue lives in this one file (the kernels are in
``activation.py``, imported on the first call, never by ``import opir``).
Every op of ``opir.ops.activations`` gets an impl; each predicate accepts what
the kernel covers and rejects the rest, which falls through to the next
provider: x (or gate and up) in fp32, bf16 or fp16 on the provider's device
(CUDA/ROCm, or CPU under ``TRITON_INTERPRET=1``), the last dim contiguous (rows
may be strided, leading dims arbitrary), any number of rows including zero.
Inputs invalid for every provider (odd last dim, mismatched gate/up, a bad
``approximate``) pass the predicates and are rejected by the kernels' wrappers
with the ops' own messages.

Eager calls launch the kernel directly; while a dispatch mode is active (make_fx,
FakeTensor, the compile lowering) the traceable impl calls
``torch.ops.opir_triton.<op>``, a ``triton_op``, so lowering records one node.
"""

from __future__ import annotations

import torch

from opir.ops import (
    fatrelu_and_mul,
    gelu_and_mul,
    gelu_and_mul_sparse,
    gelu_mul,
    mul_and_silu,
    silu_and_mul,
    silu_mul,
    swigluoai_and_mul,
)
from opir.providers.triton.availability import ON_CPU, REASON, SUPPORTED

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_kernels = None


def _k():
    """The kernel module (imports Triton on first use)."""
    global _kernels
    if _kernels is None:
        import opir.providers.triton.activation as kernels

        _kernels = kernels
    return _kernels


def _ops():
    _k()
    return torch.ops.opir_triton


def _ok(t: torch.Tensor) -> bool:
    if t.dtype not in KERNEL_DTYPES or not (t.is_cpu if ON_CPU else t.is_cuda):
        return False
    return t.is_contiguous() or t.stride(-1) == 1


def _ok_pair(gate: torch.Tensor, up: torch.Tensor) -> bool:
    return _ok(gate) and (up.is_contiguous() or up.stride(-1) == 1)


def _register(op, supports_args, eager):
    return op.register_impl(
        "triton", supported=SUPPORTED, reason=REASON, supports_args=supports_args, eager=eager
    )


# --- merged [gate | up] ops ----------------------------------------------------------


def supports_silu_and_mul(x) -> bool:
    return _ok(x)


@_register(silu_and_mul, supports_silu_and_mul, lambda x: _k().silu_and_mul(x))
def triton_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _ops().silu_and_mul.default(x)


def supports_mul_and_silu(x) -> bool:
    return _ok(x)


@_register(mul_and_silu, supports_mul_and_silu, lambda x: _k().mul_and_silu(x))
def triton_mul_and_silu(x: torch.Tensor) -> torch.Tensor:
    return _ops().mul_and_silu.default(x)


def supports_gelu_and_mul(x, approximate="none") -> bool:
    return _ok(x)


@_register(
    gelu_and_mul,
    supports_gelu_and_mul,
    lambda x, approximate="none": _k().gelu_and_mul(x, approximate),
)
def triton_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _ops().gelu_and_mul.default(x, approximate)


def supports_fatrelu_and_mul(x, threshold=0.0) -> bool:
    return _ok(x)


@_register(
    fatrelu_and_mul,
    supports_fatrelu_and_mul,
    lambda x, threshold=0.0: _k().fatrelu_and_mul(x, threshold),
)
def triton_fatrelu_and_mul(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return _ops().fatrelu_and_mul.default(x, float(threshold))


def supports_gelu_and_mul_sparse(x, std_multiplier, approximate="none") -> bool:
    return _ok(x)


@_register(
    gelu_and_mul_sparse,
    supports_gelu_and_mul_sparse,
    lambda x, std_multiplier, approximate="none": _k().gelu_and_mul_sparse(
        x, std_multiplier, approximate
    ),
)
def triton_gelu_and_mul_sparse(
    x: torch.Tensor, std_multiplier: float, approximate: str = "none"
) -> torch.Tensor:
    return _ops().gelu_and_mul_sparse.default(x, float(std_multiplier), approximate)


def supports_swigluoai_and_mul(x, alpha=1.702, limit=7.0) -> bool:
    return _ok(x)


@_register(
    swigluoai_and_mul,
    supports_swigluoai_and_mul,
    lambda x, alpha=1.702, limit=7.0: _k().swigluoai_and_mul(x, alpha, limit),
)
def triton_swigluoai_and_mul(
    x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0
) -> torch.Tensor:
    return _ops().swigluoai_and_mul.default(x, float(alpha), float(limit))


# --- separate gate and up (Hugging Face) -----------------------------------------------


def supports_silu_mul(gate, up) -> bool:
    return _ok_pair(gate, up)


@_register(silu_mul, supports_silu_mul, lambda gate, up: _k().silu_mul(gate, up))
def triton_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _ops().silu_mul.default(gate, up)


def supports_gelu_mul(gate, up, approximate="none") -> bool:
    return _ok_pair(gate, up)


@_register(
    gelu_mul,
    supports_gelu_mul,
    lambda gate, up, approximate="none": _k().gelu_mul(gate, up, approximate),
)
def triton_gelu_mul(
    gate: torch.Tensor, up: torch.Tensor, approximate: str = "none"
) -> torch.Tensor:
    return _ops().gelu_mul.default(gate, up, approximate)
