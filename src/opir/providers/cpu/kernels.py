"""The cpu kernels: launchers around the C++ extension, and ``torch.ops.opir_cpu.*``.

The custom ops (the norm ops' schemas, their fakes) are defined when
``opir.providers.cpu`` is imported, before any C++ is built or loaded:
code that Inductor cached in an earlier process calls ``torch.ops.opir_cpu.*``
directly, and their implementations build or load the extension on first
use, so such code works in a fresh process. Eager calls do not go through
the dispatcher: ``load()`` returns the launchers, which call the pybind
functions directly (about 1 µs per call).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

import opir.providers.cpu.build as build
from opir.core.op import Op
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.ops.checks import check_float
from opir.providers.kit import define

NAMESPACE = "opir_cpu"
FAMILY = "norms"
"""The kernel source family these ops live in (``norms.cpp``, built as its own extension).
Another family gets its own ``extension`` and launchers in the same way."""

_extension = None


def extension() -> Any:
    """The pybind module of the kernels, after building/loading it once."""
    global _extension
    if _extension is None:
        _extension = build.load(FAMILY)  # the one call into the build
    return _extension


def load() -> types.SimpleNamespace:
    """The eager launchers by op name (builds the extension; ``ProviderBuildError`` if
    that fails)."""
    ext = extension()
    return types.SimpleNamespace(
        rms_norm=typed(ext.rms_norm, rms_norm),
        fused_add_rms_norm=typed(
            _in_place_or_on_copies(ext.fused_add_rms_norm_), fused_add_rms_norm
        ),
        rms_norm_gated=typed(ext.rms_norm_gated, rms_norm_gated),
    )


def typed(
    fn: Callable[..., Any], op: Op, checks: Mapping[str, Callable[[Any, str], None]] | None = None
) -> Callable[..., Any]:
    """``fn`` (a pybind function) with its "incompatible function arguments" TypeError
    turned into the error native raises for the culprit: a TypeError naming a float or
    int argument, or what ``checks[name](value, op_name)`` raises for the parameter
    ``name`` (e.g. ``{"approximate": check_approximate}``: the op's own ValueError).
    Every family's launchers use it (``activation_kernels.py`` too)."""

    def launch(*args: Any) -> Any:
        try:
            return fn(*args)
        except TypeError as e:
            raise _argument_error(op, args, e, checks or {}) from None

    launch.__name__ = f"cpu_{op.name}"
    return launch


def _argument_error(
    op: Op, args: tuple, error: TypeError, checks: Mapping[str, Callable[[Any, str], None]]
) -> Exception:
    for param, value in zip(op.signature.parameters.values(), args, strict=False):
        kind = str(param.annotation)
        try:
            if param.name in checks:
                checks[param.name](value, op.name)
            elif kind == "float":
                check_float(value, param.name, op.name)
        except (TypeError, ValueError) as clear:
            return clear
        if (
            "int" in kind
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            return TypeError(
                f"{op.name}: {param.name} must be an int or None, got {type(value).__name__}"
            )
    return error


def _in_place_or_on_copies(kernel: Callable[..., bool]) -> Callable[..., Any]:
    """In place when x and the residual are separate memory; otherwise (the kernel
    reports that they alias, overlap, or x's rows overlap each other) on private
    copies, which are returned."""

    def launch(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if kernel(*args):
            return args[0], args[1]
        copies = [a.clone(memory_format=torch.contiguous_format) for a in args[:2]]
        weight = None if args[2] is None else args[2].clone()
        if not kernel(*copies, weight, *args[3:]):
            raise AssertionError("opir cpu: fresh buffers reported as overlapping (a bug)")
        return copies[0], copies[1]

    return launch


# --- torch custom ops: what tracing (make_fx, lowering, Inductor) records ------------


def _refusing_overlap(*args: Any) -> None:
    if not extension().fused_add_rms_norm_(*args):
        raise ValueError(
            "opir_cpu::fused_add_rms_norm_: x and residual alias or overlap (or x's rows "
            "overlap each other), so they cannot be written in place; pass separate, "
            "non-overlapping tensors (e.g. .clone()) or call the functional fused_add_rms_norm"
        )


define(NAMESPACE, rms_norm, lambda *args: extension().rms_norm(*args), device_types="cpu")
define(NAMESPACE, fused_add_rms_norm, _refusing_overlap, inplace=True, device_types="cpu")
define(
    NAMESPACE, rms_norm_gated, lambda *args: extension().rms_norm_gated(*args), device_types="cpu"
)
