"""The ops' input contract: checks every implementation runs.

The native functions call them, and so do launchers that do not go through
the native function (the triton kernels), so that bad input gets the same
clear ``ValueError`` whichever provider runs. Each names the op and the
argument, and says what was expected. ``check_float`` is the scalar check:
the natives reject a non-number where a float belongs with a TypeError from
their arithmetic; a launcher that hands the value to a kernel raises that
TypeError with this message instead of the kernel library's own error.
"""

from __future__ import annotations

import numbers

import torch

_REALS = (float, int, numbers.Real, torch.SymFloat, torch.SymInt)  # the common ones first


def check_float(value: object, name: str, op: str) -> None:
    """``value`` is a real number (the op's float parameter ``name``); TypeError otherwise."""
    if isinstance(value, _REALS):
        return
    raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__} {value!r}")


def check_x_weight(x: torch.Tensor, weight: torch.Tensor | None, op: str) -> None:
    """``x`` floating point with a hidden dim; ``weight`` None or [hidden], float, x's device."""
    if not x.dtype.is_floating_point:
        raise ValueError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension (the hidden size)")
    if weight is None:
        return
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"{op}: weight must have shape [{x.shape[-1]}] (x's last dim), got {list(weight.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{op}: weight must be floating point, got {weight.dtype}")


def check_like_x(x: torch.Tensor, other: torch.Tensor, name: str, op: str) -> None:
    """``other`` (e.g. the residual) has x's shape, dtype and device."""
    if other.shape != x.shape or other.dtype != x.dtype or other.device != x.device:
        raise ValueError(
            f"{op}: {name} must match x's shape, dtype and device; got {list(other.shape)} "
            f"{other.dtype} {other.device} vs {list(x.shape)} {x.dtype} {x.device}"
        )


def check_size(value: int | None, hidden: int, name: str, op: str, divides: bool = False) -> None:
    """``value`` (variance_size, group_size) is None or in [1, hidden] (a divisor of it)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(
            f"{op}: {name} must be an int or None, got {type(value).__name__} {value!r}"
        )
    if not 1 <= value <= hidden or (divides and hidden % value):
        what = "a divisor of" if divides else "in [1,"
        raise ValueError(
            f"{op}: {name} must be {what} {hidden}{']' if not divides else ''} "
            f"(x's last dim), got {value}"
        )


def check_gate(x: torch.Tensor, gate: torch.Tensor, op: str = "rms_norm_gated") -> None:
    """``gate`` is floating point with x's shape and device (any float dtype)."""
    if gate.shape != x.shape or gate.device != x.device or not gate.dtype.is_floating_point:
        raise ValueError(
            f"{op}: gate must be a floating-point tensor of x's shape and device; got "
            f"{list(gate.shape)} {gate.dtype} {gate.device} vs {list(x.shape)} {x.device}"
        )


ALL_REDUCE_ORDER = (
    "all_reduce_rms_norm's parameters are (x, x_residual, weight, epsilon, variance_size=None, "
    "weight_bias=0.0), the order of the other norms (before opir 0.2 weight_bias came before "
    "variance_size); pass weight_bias by keyword"
)


def check_all_reduce_args(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    variance_size: int | None,
    weight_bias: float,
    op: str = "all_reduce_rms_norm",
) -> None:
    """``all_reduce_rms_norm``'s contract (``op``: the op named in errors), and a clear
    TypeError for callers of the old order ``(..., epsilon, weight_bias, variance_size)``,
    never a silent swap."""
    if isinstance(variance_size, float) or weight_bias is None:
        raise TypeError(
            f"{op}: got variance_size={variance_size!r}, weight_bias={weight_bias!r}; "
            + ALL_REDUCE_ORDER
        )
    check_x_weight(x, weight, op)
    if x_residual is not None:
        check_like_x(x, x_residual, "x_residual", op)
    check_size(variance_size, x.shape[-1], "variance_size", op)
