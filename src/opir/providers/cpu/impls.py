"""The ``cpu`` provider's predicates and impls, registered on the norm ops.

Eager calls go straight to the pybind functions (about 1 µs per call); while a
dispatch mode is active (make_fx, FakeTensor, export) the impls call the
custom ops of ``ops.py`` instead, which cost ~2.5 µs more but appear as graph
nodes.

A failing build (no compiler, unusable cache dir) raises ``ProviderBuildError``
when the user asked for ``cpu``; when ``cpu`` was reached through the platform
defaults, it is withdrawn from all three ops with one warning and the call is
re-run through the op, so the next provider answers.
"""

from __future__ import annotations

import warnings

import torch

import opir.providers.cpu.build as build
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers.cpu.availability import REASON, SUPPORTED

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OPS = (rms_norm, fused_add_rms_norm, rms_norm_gated)

# Predicates say only what the kernels cannot do; they are on the dispatch hot
# path, so each reads as few tensor attributes as possible. The checks are
# written out in each predicate rather than shared through helper functions:
# a Python call costs ~80 ns here, a quarter of the predicate.


def supports_rms_norm(
    x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if x_residual.dtype is not dtype or not (
        x_residual.is_contiguous() or x_residual.stride(-1) == 1
    ):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


def supports_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if gate is not None and (
        gate.dtype not in _DTYPES or not (gate.is_contiguous() or gate.stride(-1) == 1)
    ):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


_extension = None
_withdrawn = False


def extension():
    """The pybind module of the kernels, after building/loading it once."""
    global _extension
    if _extension is None:
        _extension = build.load()
    return _extension


def kernels():
    """``torch.ops.opir_cpu``: the same kernels as traceable torch custom ops."""
    return torch.ops.opir_cpu


def _loaded_or_fallback(op):
    """The extension, or (when the build failed and the user did not ask ``op`` for
    ``cpu``) None after withdrawing ``cpu`` with one warning; the caller re-runs ``op``."""
    global _withdrawn
    try:
        return extension()
    except build.ProviderBuildError as e:
        if op.explicitly_requested("cpu"):
            raise
        if not _withdrawn:
            _withdrawn = True
            warnings.warn(
                f"opir: the 'cpu' provider is unavailable, using the next provider instead.\n{e}",
                RuntimeWarning,
                stacklevel=4,
            )
        for o in _OPS:
            if not o.explicitly_requested("cpu"):
                o.withdraw_impl("cpu", f"its C++ build failed: {str(e).splitlines()[0]}")
        return None


def _argument_error(op: str, epsilon, sizes: dict, error: TypeError) -> TypeError:
    """Turn pybind's "incompatible function arguments" into a message naming the argument."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (float, int)):
        return TypeError(f"{op}: epsilon must be a float, got {type(epsilon).__name__}")
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return TypeError(f"{op}: {name} must be an int or None, got {type(value).__name__}")
    return error


def _eager_rms_norm(x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False):
    """The pybind entry point: what eager calls run (no dispatcher)."""
    args = (x, weight, epsilon, variance_size, weight_bias, fp32_multiply)
    ext = _extension or _loaded_or_fallback(rms_norm)
    if ext is None:
        return rms_norm(*args)
    try:
        return ext.rms_norm(*args)
    except TypeError as e:
        raise _argument_error("rms_norm", epsilon, {"variance_size": variance_size}, e) from None


@rms_norm.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_rms_norm,
    eager=_eager_rms_norm,
)
def cpu_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """Traceable: the kernel as a torch custom op (what lowering records)."""
    return torch.ops.opir_cpu.rms_norm.default(
        x, weight, epsilon, variance_size, weight_bias, fp32_multiply
    )


def _eager_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
):
    """In place when x and the residual are separate memory; otherwise (they alias,
    overlap, or x's rows overlap each other) on private copies, which are returned."""
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    ext = _extension or _loaded_or_fallback(fused_add_rms_norm)
    if ext is None:
        return fused_add_rms_norm.maybe_inplace(x, x_residual, *args)
    try:
        if ext.fused_add_rms_norm_(x, x_residual, *args):
            return x, x_residual
    except TypeError as e:
        sizes = {"variance_size": variance_size}
        raise _argument_error("fused_add_rms_norm", epsilon, sizes, e) from None
    return _on_private_copies(ext, x, x_residual, *args)


@fused_add_rms_norm.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_fused_add_rms_norm,
    inplace=True,
    aliasing_safe=True,  # the kernel detects overlap and runs on private copies
    eager=_eager_fused_add_rms_norm,
)
def cpu_fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Traceable: the in-place custom op (it refuses overlapping buffers with an error
    saying "alias"/"overlap"; the eager function serves those on private copies)."""
    torch.ops.opir_cpu.fused_add_rms_norm_.default(
        x, x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply
    )
    return x, x_residual


def _on_private_copies(
    ext, x, x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply
):
    """The kernel refused to write overlapping outputs: run it on fresh buffers."""
    x_out = x.clone(memory_format=torch.contiguous_format)
    residual_out = x_residual.clone(memory_format=torch.contiguous_format)
    if weight is not None:
        weight = weight.clone()
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    if not ext.fused_add_rms_norm_(x_out, residual_out, *args):
        raise AssertionError("opir cpu: fresh buffers reported as overlapping (a bug)")
    return x_out, residual_out


def _eager_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False, fp32_multiply=False
):
    args = (x, gate, weight, epsilon, group_size, norm_before_gate, fp32_multiply)
    ext = _extension or _loaded_or_fallback(rms_norm_gated)
    if ext is None:
        return rms_norm_gated(*args)
    try:
        return ext.rms_norm_gated(*args)
    except TypeError as e:
        raise _argument_error("rms_norm_gated", epsilon, {"group_size": group_size}, e) from None


@rms_norm_gated.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_rms_norm_gated,
    eager=_eager_rms_norm_gated,
)
def cpu_rms_norm_gated(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """Traceable: the kernel as a torch custom op."""
    return torch.ops.opir_cpu.rms_norm_gated.default(
        x, gate, weight, epsilon, group_size, norm_before_gate, fp32_multiply
    )
