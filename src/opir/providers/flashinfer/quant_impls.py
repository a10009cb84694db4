"""The ``flashinfer`` provider's fused norm -> fp8 quant impls (launchers: ``kernels.py``).

``rms_norm_quant`` -> ``flashinfer.norm.rmsnorm_quant`` and ``fused_add_rms_norm_quant``
-> ``flashinfer.norm.fused_add_rmsnorm_quant`` (in place on the residual, like
opir's ``maybe_inplace``). The impls belong to ``impls.PROVIDER``.

Limits the predicates state (anything else falls through to the next provider):
CUDA tensors in fp16 or bf16, contiguous, with a hidden size that is a multiple
of 8 (FlashInfer's 16-byte vector loads); a weight of x's dtype (FlashInfer reads
it as the input type); ``weight_bias`` 0.0 (there is no Gemma variant of these
kernels); ``dtype`` ``torch.float8_e4m3fn`` only (FlashInfer's kernels clamp to
±448: no int8, no fnuz).

Numerics differ from the contract, held to the fused ops' stated tolerance (fp8:
one fp8 step, ``atol=2**-9, rtol=1/8``): FlashInfer computes ``x * rsqrt(mean +
eps) * weight * (1 / scale)`` in one fp32 chain and casts once, where the
contract rounds the normalised value to x's dtype, multiplies by the weight in
x's dtype (rounding again) and only then quantises; and it uses the GPU's fast
``rsqrt``. Each difference moves the value before the cast by at most an ulp or
two of x's dtype, hence q by at most one fp8 step. ``fused_add_rmsnorm_quant``
stores the residual sum rounded to x's dtype (the contract's residual), and may
normalise that rounded sum rather than the fp32 one: also within one step. The
all-reduce + norm + quant fusion (``AllReduceFusionPattern.kARResidualRMSNormFP8Quant``)
is not wired: which scale convention it takes could not be verified here.
"""

from __future__ import annotations

import torch

from opir.ops.quant import fused_add_rms_norm_quant, rms_norm_quant
from opir.providers.flashinfer.impls import PROVIDER

_DTYPES = (torch.float16, torch.bfloat16)


def _ok(x, weight, weight_bias, dtype) -> bool:
    if dtype is not torch.float8_e4m3fn or weight is None or weight_bias != 0.0:
        return False
    if x.dtype not in _DTYPES or not x.is_cuda or weight.dtype is not x.dtype:
        return False
    return x.dim() >= 1 and x.shape[-1] % 8 == 0 and x.is_contiguous() and weight.is_contiguous()


def supports_rms_norm_quant(x, weight, epsilon, scale, dtype, weight_bias=0.0) -> bool:
    return _ok(x, weight, weight_bias, dtype)


def supports_fused_add_rms_norm_quant(
    x, x_residual, weight, epsilon, scale, dtype, weight_bias=0.0
) -> bool:
    if not _ok(x, weight, weight_bias, dtype):
        return False
    return x_residual.is_contiguous() and x_residual.dtype is x.dtype


PROVIDER.register(rms_norm_quant, supports_rms_norm_quant)
PROVIDER.register(
    fused_add_rms_norm_quant,
    supports_fused_add_rms_norm_quant,
    inplace=True,
    traceable="traceable_fused_add_rms_norm_quant",
)
