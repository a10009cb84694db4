"""The ``triton`` provider's activation predicates and impls.

The kernel and its launchers are in ``activation.py``, the custom ops
``torch.ops.opir_triton.<op>`` in ``kernels.py`` (both imported on the first
call, never by ``import opir``); the impls belong to ``impls.PROVIDER``, so
Triton loads (or fails to) once for every op. Each predicate accepts what the
kernel covers and rejects the rest, which falls through to the next provider:
x (or gate and up) in fp32, bf16 or fp16 on the provider's device (CUDA/ROCm,
or CPU under ``TRITON_INTERPRET=1``), the last dim contiguous (rows may be
strided, leading dims arbitrary), any number of rows including zero. Inputs
invalid for every provider (odd last dim, mismatched gate/up, a bad
``approximate``, a float parameter that is not a number) pass the predicates
and are rejected by the launchers with the ops' own exception types.
"""

from __future__ import annotations

import torch

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
from opir.providers.triton.availability import ON_CPU
from opir.providers.triton.impls import PROVIDER

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ok(t: torch.Tensor) -> bool:
    if t.dtype not in KERNEL_DTYPES or not (t.is_cpu if ON_CPU else t.is_cuda):
        return False
    return t.is_contiguous() or t.stride(-1) == 1


def _ok_pair(gate: torch.Tensor, up: torch.Tensor) -> bool:
    return _ok(gate) and (up.is_contiguous() or up.stride(-1) == 1)


def supports_silu_and_mul(x) -> bool:
    return _ok(x)


def supports_mul_and_silu(x) -> bool:
    return _ok(x)


def supports_gelu_and_mul(x, approximate="none") -> bool:
    return _ok(x)


def supports_fatrelu_and_mul(x, threshold=0.0) -> bool:
    return _ok(x)


def supports_gelu_and_mul_sparse(x, std_multiplier, approximate="none") -> bool:
    return _ok(x)


def supports_swigluoai_and_mul(x, alpha=1.702, limit=7.0) -> bool:
    return _ok(x)


def supports_silu_mul(gate, up) -> bool:
    return _ok_pair(gate, up)


def supports_gelu_mul(gate, up, approximate="none") -> bool:
    return _ok_pair(gate, up)


PROVIDER.register(silu_and_mul, supports_silu_and_mul)
PROVIDER.register(mul_and_silu, supports_mul_and_silu)
PROVIDER.register(gelu_and_mul, supports_gelu_and_mul)
PROVIDER.register(fatrelu_and_mul, supports_fatrelu_and_mul)
PROVIDER.register(gelu_and_mul_sparse, supports_gelu_and_mul_sparse)
PROVIDER.register(swigluoai_and_mul, supports_swigluoai_and_mul)
PROVIDER.register(silu_mul, supports_silu_mul)
PROVIDER.register(gelu_mul, supports_gelu_mul)
