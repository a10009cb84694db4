"""Measured default priorities per platform (measured by the benchmarks, not guessed).

Eager mode on a CPU-only machine: the ``cpu`` C++ kernels first, ``native``
last. ``inductor`` is deliberately not in the eager default: its first call
per dtype compiles for seconds, which an eager caller never asked for; list it
explicitly to use it. Numbers: README, "opir bench kernels".

Compiled (``opir.compile``) on a CPU-only machine: ``native`` for the two norms
measured by ``opir bench compile``: Inductor fuses their decomposition with the
neighbouring adds and casts, which the opaque ``cpu`` kernel prevents (0.99-1.01x
plain torch.compile vs 1.02-1.10x). Ops not in that table (``rms_norm_gated``)
use the eager order until measured.

On a CUDA/ROCm machine (NOT yet measured: no GPU was available when these
were written; docs/gpu-providers.md): eager puts ``triton`` first — it covers
every dtype/weight combination and matches the contract's roundings exactly —
then ``flashinfer`` (where its predicate accepts; it rounds once where the
contract rounds twice, held to the op tolerance), then ``native``. For
``all_reduce_rms_norm`` FlashInfer's fused one-kernel all-reduce comes first
(only it saves the extra pass over the activations). Compiled graphs lower the
norms to ``native`` so that Inductor fuses them with their neighbours, as vLLM
does on GPUs, and the fused TP op to the same order as eager (Inductor cannot
fuse across a collective). ``opir bench kernels`` / ``opir bench compile`` on a
GPU are what should confirm or change these tables.
"""

from __future__ import annotations

from opir.core.platform import detect
from opir.core.registry import set_platform_defaults

CPU_EAGER = {
    "rms_norm": ["cpu", "native"],
    "fused_add_rms_norm": ["cpu", "native"],
    "rms_norm_gated": ["cpu", "native"],
    # Activations: the cpu kernels are bit-identical to native in bf16/fp16 and faster
    # than native and vLLM's CPU kernels (docs/activations.md, "opir bench activations").
    **{
        name: ["cpu", "native"]
        for name in (
            "silu_and_mul",
            "mul_and_silu",
            "gelu_and_mul",
            "fatrelu_and_mul",
            "gelu_and_mul_sparse",
            "swigluoai_and_mul",
            "silu_mul",
            "gelu_mul",
        )
    },
    # int8 quantization: the cpu kernels are bit-identical to native (fp8 and fp32
    # silu fall through to it) and faster than vLLM's CPU int8 kernels
    # (docs/quantization.md, "cpu provider").
    **{
        name: ["cpu", "native"]
        for name in (
            "static_quant",
            "dynamic_quant",
            "rms_norm_quant",
            "rms_norm_dynamic_quant",
            "fused_add_rms_norm_quant",
            "fused_add_rms_norm_dynamic_quant",
            "silu_and_mul_quant",
            "silu_and_mul_dynamic_quant",
            # torch._int_mm + the native's fp64 epilogue: bit-identical, 10-30x faster
            "scaled_mm",
        )
    },
}


CPU_COMPILE = {
    "rms_norm": ["native"],
    "fused_add_rms_norm": ["native"],
}


GPU_EAGER = {
    "rms_norm": ["triton", "flashinfer", "cpu", "native"],
    "fused_add_rms_norm": ["triton", "flashinfer", "cpu", "native"],
    "rms_norm_gated": ["triton", "cpu", "native"],
    "all_reduce_rms_norm": ["flashinfer", "triton", "native"],
}


GPU_COMPILE = {
    "rms_norm": ["native"],
    "fused_add_rms_norm": ["native"],
    "rms_norm_gated": ["native"],
    "all_reduce_rms_norm": ["flashinfer", "triton", "native"],
}


def apply() -> None:
    """Install the tables that fit this machine."""
    platform = detect()
    if platform.cuda or platform.rocm:
        set_platform_defaults(GPU_EAGER)
        set_platform_defaults(GPU_COMPILE, mode="compile")
    elif not platform.has_gpu:
        set_platform_defaults(CPU_EAGER)
        set_platform_defaults(CPU_COMPILE, mode="compile")
