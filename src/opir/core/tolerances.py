"""How close an impl must be to the native function, per output dtype."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tolerance(NamedTuple):
    """Absolute and relative tolerance, as ``torch.testing.assert_close`` takes them."""

    atol: float
    rtol: float


DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-5, rtol=1.3e-6),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-3),
    torch.bfloat16: Tolerance(atol=1e-3, rtol=1.6e-2),
    # quantised outputs: exact unless the op says otherwise (a kernel that follows a
    # quantisation contract reproduces its roundings; see docs/quantization.md)
    torch.float8_e4m3fn: Tolerance(atol=0.0, rtol=0.0),
    torch.float8_e4m3fnuz: Tolerance(atol=0.0, rtol=0.0),
    torch.float8_e5m2: Tolerance(atol=0.0, rtol=0.0),
    torch.float8_e5m2fnuz: Tolerance(atol=0.0, rtol=0.0),
}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    try:
        return DEFAULT_TOLERANCES[dtype]
    except KeyError:
        raise KeyError(
            f"no default tolerance for {dtype}; known dtypes are "
            f"{sorted(str(d) for d in DEFAULT_TOLERANCES)}. Set one with "
            "op.override_tolerance(dtype, atol=..., rtol=...)"
        ) from None
