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

Laid out like every provider (see ``opir.providers``): ``availability.py``,
``kernels.py`` (the FlashInfer calls and ``torch.ops.opir_flashinfer.*``),
``impls.py`` (predicates and registrations, ``PROVIDER``); the activation ops'
predicates and registrations are in ``activation_impls.py``, ``rotary_embedding``'s
(through ``apply_rope_with_cos_sin_cache_inplace``: fp32 cache, neox style; its
rounding rule and bound) in ``rotary_impls.py`` (what they cover is said there).

Rounding differs from opir's contract (held to the op tolerance, see
docs/gpu-providers.md): with a weight of x's dtype FlashInfer rounds once
(contract: round, multiply, round), and ``gemma_fused_add_rmsnorm`` normalises
the sum after rounding it to x's dtype (contract: the unrounded fp32 sum).
"""

from __future__ import annotations

from opir.providers.flashinfer import (
    activation_impls,  # noqa: F401  (the activation impls)
    rotary_impls,  # noqa: F401  (rotary_embedding)
)
from opir.providers.flashinfer.availability import REASON, SUPPORTED
from opir.providers.flashinfer.impls import (
    PROVIDER,
    supports_all_reduce_rms_norm,
    supports_fused_add_rms_norm,
    supports_rms_norm,
)

__all__ = [
    "PROVIDER",
    "REASON",
    "SUPPORTED",
    "supports_all_reduce_rms_norm",
    "supports_fused_add_rms_norm",
    "supports_rms_norm",
]
