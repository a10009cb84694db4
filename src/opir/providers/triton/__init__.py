"""The ``triton`` provider: Triton kernels for the RMSNorm family, the activations and RoPE.

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

Laid out like every provider (see ``opir.providers``): ``availability.py``,
``kernels.py`` (launchers and ``torch.ops.opir_triton.*``, ``triton_op`` custom
ops, so lowering records one node per kernel and Inductor sees the Triton
kernel), ``impls.py`` (predicates and registrations, ``PROVIDER``); the kernel
sources are one file per op family (``norm.py``, ``gated.py``, ``all_reduce.py``,
``activation.py``, ``rotary.py``) with ``config.py`` (launch configuration) and
``common.py`` (shared helpers). The activations' predicates and registrations are in
``activation_impls.py`` and the rotary ops' in ``rotary_impls.py`` (what they
cover is said there).
The kernels never synchronise with the host and the predicates read only
tensor metadata, so both are safe inside CUDA graph capture (the rotary
launchers check the positions' range on the host only for CPU tensors).
"""

from __future__ import annotations

from opir.providers.triton import (
    activation_impls,  # noqa: F401  (the activation family)
    rotary_impls,  # noqa: F401  (the rotary family)
)
from opir.providers.triton.availability import INTERPRET, REASON, SUPPORTED
from opir.providers.triton.impls import (
    PROVIDER,
    supports_all_reduce_rms_norm,
    supports_fused_add_rms_norm,
    supports_rms_norm,
    supports_rms_norm_gated,
)

__all__ = [
    "INTERPRET",
    "PROVIDER",
    "REASON",
    "SUPPORTED",
    "supports_all_reduce_rms_norm",
    "supports_fused_add_rms_norm",
    "supports_rms_norm",
    "supports_rms_norm_gated",
]
