"""The ``cpu`` provider's activation predicates and impls (kernels: ``activation_kernels.py``).

Eager calls go straight to the pybind functions of ``activations.cpp``;
under a dispatch mode (make_fx, FakeTensor, export) the impls call the custom
ops ``torch.ops.opir_cpu.<op>`` instead, which appear as graph nodes. A
failing build follows the kit's load-failure policy, for this family alone.

What the kernels cover (anything else is rejected by the predicates and falls
through to the next provider): CPU tensors in fp32, bf16 or fp16 whose last
dim is contiguous (leading dims may have any strides; nothing is copied), any
number of rows including zero. Inputs no provider can run (odd last dim, an
unknown ``approximate``, mismatched gate/up) pass the predicates and are
rejected by the kernels with the same ValueError the native ops raise.
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
from opir.providers.cpu.impls import family_provider

# Its own Provider of 'cpu' (see family_provider): activations.cpp is built on the
# first activation call, never by the first norm call, and a failed build
# withdraws the activations only.
PROVIDER = family_provider("opir.providers.cpu.activation_kernels")

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Predicates: only what the kernels cannot do, reading few attributes (they are on
# the dispatch hot path; the checks are written out rather than shared).


def supports_silu_and_mul(x) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_mul_and_silu(x) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_gelu_and_mul(x, approximate="none") -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_fatrelu_and_mul(x, threshold=0.0) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_gelu_and_mul_sparse(x, std_multiplier, approximate="none") -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_swigluoai_and_mul(x, alpha=1.702, limit=7.0) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_silu_mul(gate, up) -> bool:
    if gate.dtype not in _DTYPES or not gate.is_cpu:
        return False
    if not (gate.is_contiguous() or gate.stride(-1) == 1):
        return False
    return up.is_contiguous() or up.stride(-1) == 1


def supports_gelu_mul(gate, up, approximate="none") -> bool:
    if gate.dtype not in _DTYPES or not gate.is_cpu:
        return False
    if not (gate.is_contiguous() or gate.stride(-1) == 1):
        return False
    return up.is_contiguous() or up.stride(-1) == 1


PROVIDER.register(silu_and_mul, supports_silu_and_mul)
PROVIDER.register(mul_and_silu, supports_mul_and_silu)
PROVIDER.register(gelu_and_mul, supports_gelu_and_mul)
PROVIDER.register(fatrelu_and_mul, supports_fatrelu_and_mul)
PROVIDER.register(gelu_and_mul_sparse, supports_gelu_and_mul_sparse)
PROVIDER.register(swigluoai_and_mul, supports_swigluoai_and_mul)
PROVIDER.register(silu_mul, supports_silu_mul)
PROVIDER.register(gelu_mul, supports_gelu_mul)
