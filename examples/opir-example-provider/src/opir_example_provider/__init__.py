"""The ``example`` provider: opir's ``rms_norm`` in plain PyTorch.

Importing this module registers the impl; opir imports it through the
``opir.providers`` entry point declared in this package's pyproject.toml.
It uses opir's public API only: the op object and ``register_impl``.
"""

from __future__ import annotations

import torch

from opir.ops import rms_norm

PROVIDER = "example"


def supports(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> bool:
    """Take the calls this kernel handles; decline the rest (native runs them).

    Declining is also how this provider deals with invalid arguments: native
    then raises the op's own error. Must return a plain bool, for real and
    fake tensors alike, and never look at tensor values.
    """
    if not x.dtype.is_floating_point or x.dim() < 1 or x.stride(-1) != 1:
        return False
    if type(epsilon) not in (float, int) or type(weight_bias) not in (float, int):
        return False
    hidden = x.shape[-1]
    if variance_size is not None and not 1 <= variance_size <= hidden:
        return False
    if weight is None:
        return True
    return (
        weight.dim() == 1
        and weight.shape[0] == hidden
        and weight.device == x.device
        and weight.dtype.is_floating_point
    )


@rms_norm.register_impl(PROVIDER, supports_args=supports)
def example_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
    weight_bias: float = 0.0,
    fp32_multiply: bool = False,
) -> torch.Tensor:
    """Normalise in fp32 over the first ``variance_size`` columns, multiply by the
    weight in ``promote_types(x.dtype, weight.dtype)`` (in fp32 with ``fp32_multiply``),
    return x's dtype."""
    s = x.float()
    head = s if variance_size is None else s[..., :variance_size]
    y = s * torch.rsqrt(head.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    if weight is not None:
        w = weight if weight_bias == 0.0 else weight.float() + weight_bias
        if fp32_multiply:  # multiply in fp32, round once
            return (y * w.float()).to(x.dtype)
        y = y.to(torch.promote_types(x.dtype, w.dtype)) * w
    return y.to(x.dtype)
