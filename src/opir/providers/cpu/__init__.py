"""The ``cpu`` provider: hand-written C++ kernels (ATen Vectorized, parallel over rows).

Kernels are torch custom ops (``torch.ops.opir_cpu.*``) so that compile-time
lowering can trace them; their fake implementations are registered here. The
C++ is compiled at first call (see ``build.py``), never at import.

What the kernels cover — anything else is rejected by ``supports_args`` and
falls through to the next provider: CPU tensors; x in fp32, bf16 or fp16; a
weight of x's dtype or fp32; the last dim contiguous (leading dims may have any
strides, nothing is copied); any number of rows, including zero. Inputs that
are invalid for every provider (wrong weight length or device, residual of
another shape, variance_size or group_size out of range) are accepted by the
predicates and rejected by the kernels' own checks with a clear message.
"""

from __future__ import annotations

import platform

import torch

from opir.core.platform import detect
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers.cpu import build

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ARCHES = ("x86_64", "AMD64", "aarch64", "arm64")


def _availability() -> tuple[bool, str]:
    if platform.machine() not in _ARCHES:
        return False, f"CPU architecture {platform.machine()} is not x86-64 or arm64"
    if detect().cxx is None:
        return False, "no C++ compiler found (install g++ or set CXX)"
    return True, ""


SUPPORTED, REASON = _availability()


# Predicates say only what the kernels cannot do; they are on the dispatch hot
# path, so each reads as few tensor attributes as possible. Inputs that are
# invalid for every provider (a weight of the wrong length, variance_size out
# of range) pass here and are rejected by the kernel's own clear checks.
_F32 = torch.float32


# The checks are written out in each predicate rather than shared through
# helper functions: a Python call costs ~80 ns here, a quarter of the predicate.


def supports_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0) -> bool:
    if weight_bias != 0.0:
        return False
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or (wd := weight.dtype) is dtype or wd is _F32


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0
) -> bool:
    if weight_bias != 0.0:
        return False
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if x_residual.dtype is not dtype or not (
        x_residual.is_contiguous() or x_residual.stride(-1) == 1
    ):
        return False
    return weight is None or (wd := weight.dtype) is dtype or wd is _F32


def supports_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if gate is None or gate.dtype is not dtype or not (
        gate.is_contiguous() or gate.stride(-1) == 1
    ):
        return False
    return weight is None or (wd := weight.dtype) is dtype or wd is _F32


_extension = None


def extension():
    """The pybind module of the kernels, after building/loading it once."""
    global _extension
    if _extension is None:
        module = build.load()
        _register_fakes()
        _extension = module
    return _extension


def kernels():
    """``torch.ops.opir_cpu``: the same kernels as traceable torch custom ops."""
    extension()
    return torch.ops.opir_cpu


# Eager calls go straight to the pybind functions (about 1 µs per call here);
# while a dispatch mode is active (make_fx, FakeTensor, export) the impls call
# the custom ops instead, which cost ~2.5 µs more but appear as graph nodes.
_dispatch_mode_depth = torch._C._len_torch_dispatch_stack


def _register_fakes() -> None:
    def rms_norm_fake(x, weight, epsilon, variance_size):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    def fused_add_fake(x, residual, weight, epsilon, variance_size):
        return None

    def gated_fake(x, gate, weight, epsilon, group_size, norm_before_gate):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    torch.library.register_fake("opir_cpu::rms_norm", rms_norm_fake)
    torch.library.register_fake("opir_cpu::fused_add_rms_norm_", fused_add_fake)
    torch.library.register_fake("opir_cpu::rms_norm_gated", gated_fake)


@rms_norm.register_impl("cpu", supported=SUPPORTED, reason=REASON, supports_args=supports_rms_norm)
def cpu_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> torch.Tensor:
    if _dispatch_mode_depth():
        return kernels().rms_norm.default(x, weight, epsilon, variance_size)
    return (_extension or extension()).rms_norm(x, weight, epsilon, variance_size)


@fused_add_rms_norm.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_fused_add_rms_norm,
    inplace=True,
)
def cpu_fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _dispatch_mode_depth():
        kernels().fused_add_rms_norm_.default(x, x_residual, weight, epsilon, variance_size)
    else:
        (_extension or extension()).fused_add_rms_norm_(
            x, x_residual, weight, epsilon, variance_size
        )
    return x, x_residual


@rms_norm_gated.register_impl(
    "cpu", supported=SUPPORTED, reason=REASON, supports_args=supports_rms_norm_gated
)
def cpu_rms_norm_gated(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    args = (x, gate, weight, epsilon, group_size, norm_before_gate)
    if _dispatch_mode_depth():
        return kernels().rms_norm_gated.default(*args)
    return (_extension or extension()).rms_norm_gated(*args)
