"""The ``flashinfer`` provider's activation impls (all of their glue is this file).

``silu_and_mul`` -> ``flashinfer.activation.silu_and_mul``; ``gelu_and_mul`` ->
``flashinfer.activation.gelu_and_mul`` (``approximate="none"``) or
``gelu_tanh_and_mul`` (``"tanh"``). API written against (docs.flashinfer.ai,
``flashinfer.activation``, flashinfer-python 0.7.x): ``fn(input, out=None,
enable_pdl=None) -> Tensor``,
``input`` of shape ``(..., 2 * d)``, output ``(..., d)``.

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


_ops = None


def _custom_ops():
    """``torch.ops.opir_flashinfer`` activation ops, defined on first use."""
    global _ops
    if _ops is None:
        _define()
        _ops = torch.ops.opir_flashinfer
    return _ops


def _run(x: torch.Tensor, name: str) -> torch.Tensor:
    from flashinfer import activation

    if x.numel() == 0:
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    return getattr(activation, name)(x)


def _define() -> None:
    @torch.library.custom_op("opir_flashinfer::silu_and_mul", mutates_args=())
    def silu_and_mul_op(x: torch.Tensor) -> torch.Tensor:
        return _run(x, "silu_and_mul")

    @torch.library.custom_op("opir_flashinfer::gelu_and_mul", mutates_args=())
    def gelu_and_mul_op(x: torch.Tensor, approximate: str) -> torch.Tensor:
        return _run(x, "gelu_tanh_and_mul" if approximate == "tanh" else "gelu_and_mul")

    for op in (silu_and_mul_op, gelu_and_mul_op):
        op.register_fake(lambda x, *_: x.new_empty((*x.shape[:-1], x.shape[-1] // 2)))


def flashinfer_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _custom_ops().silu_and_mul.default(x)


def flashinfer_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _custom_ops().gelu_and_mul.default(x, approximate)


def _eager_gelu_and_mul(x, approximate="none"):
    return _run(x, "gelu_tanh_and_mul" if approximate == "tanh" else "gelu_and_mul")


def register(supported: bool, reason: str) -> None:
    """Register the impls (called once by the provider package, which knows availability)."""
    silu_and_mul.register_impl(
        "flashinfer",
        supported=supported,
        reason=reason,
        supports_args=supports_silu_and_mul,
        eager=lambda x: _run(x, "silu_and_mul"),
    )(flashinfer_silu_and_mul)
    gelu_and_mul.register_impl(
        "flashinfer",
        supported=supported,
        reason=reason,
        supports_args=supports_gelu_and_mul,
        eager=_eager_gelu_and_mul,
    )(flashinfer_gelu_and_mul)
