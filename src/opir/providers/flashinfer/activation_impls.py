"""The ``flashinfer`` provider's activation predicates and impls (launchers: ``kernels.py``).

``silu_and_mul`` -> ``flashinfer.activation.silu_and_mul``; ``gelu_and_mul`` ->
``flashinfer.activation.gelu_and_mul`` (``approximate="none"``) or
``gelu_tanh_and_mul`` (``"tanh"``). The impls belong to ``impls.PROVIDER``.

Limits the predicates state (anything else falls through to the next provider):
CUDA tensors in fp16 or bf16, contiguous, with rows of a multiple of 16 bytes
(FlashInfer's vectorised loads; 8 elements of ``d``). Zero tokens return an
empty result without a launch.

Rounding differs from opir's contract: FlashInfer computes ``act(gate) * up`` in
fp32 (with the GPU's fast ``exp``) and rounds **once** to x's dtype; the
contract rounds the fp64 activation to x's dtype, then the product. The two
differ by at most about one ulp of x's dtype, within the ops' tolerance (bf16
rtol 1.6e-2, fp16 rtol 2e-3), which ``tests/providers/test_flashinfer_activations.py``
holds them to on a GPU. GELU-tanh is the exception to "one ulp": FlashInfer computes
torch's form ``0.5 x (1 + tanh(y))`` in fp32 (its ``math::tanh``), which cancels for
negative gates (the contract's ``x / (1 + exp(-2y))`` does not), so there the two
differ by an absolute amount that only the tolerance's atol covers; not yet measured.
"""

from __future__ import annotations

import torch

from opir.ops import gelu_and_mul, silu_and_mul
from opir.providers.flashinfer.impls import PROVIDER

_DTYPES = (torch.float16, torch.bfloat16)


def _ok(x: torch.Tensor) -> bool:
    return (
        x.dtype in _DTYPES
        and x.is_cuda
        and x.dim() >= 1
        and x.shape[-1] % 16 == 0  # 2 * d elements of 2 bytes: rows of 16-byte multiples
        and x.is_contiguous()
    )


def supports_silu_and_mul(x) -> bool:
    return _ok(x)


def supports_gelu_and_mul(x, approximate="none") -> bool:
    return approximate in ("none", "tanh") and _ok(x)


PROVIDER.register(silu_and_mul, supports_silu_and_mul)
PROVIDER.register(gelu_and_mul, supports_gelu_and_mul)
