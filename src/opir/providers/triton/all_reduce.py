"""``all_reduce_rms_norm`` on Triton: the collective op, then the residual + norm kernel.

The all-reduce is ``opir.distributed.all_reduce`` (NCCL on GPUs, gloo in the
interpreter); it returns a fresh buffer, so the normalised output is written
back into it and only ``residual_out`` is allocated. ``weight_bias`` (1.0 for
Gemma) is applied in fp32 inside the kernel, as the contract says.
"""

from __future__ import annotations

import torch

import opir.providers.triton.norm as norm
from opir.distributed.collectives import all_reduce
from opir.ops.norms import _check, _check_like_x, _check_range


def all_reduce_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    weight_bias: float = 0.0,
    variance_size: int | None = None,
    traceable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``all_reduce_rms_norm`` contract. ``traceable``: call the custom ops
    (for make_fx / lowering) instead of launching the kernel directly."""
    _check(x, weight, "all_reduce_rms_norm")
    if x_residual is not None:
        _check_like_x(x, x_residual, "x_residual", "all_reduce_rms_norm")
    _check_range(variance_size, x.shape[-1], "variance_size", "all_reduce_rms_norm")
    reduced = all_reduce(x)
    if traceable:
        ops = torch.ops.opir_triton
        if x_residual is None:
            return ops.rms_norm(reduced, weight, epsilon, variance_size, weight_bias), reduced
        return ops.add_rms_norm(reduced, x_residual, weight, epsilon, variance_size, weight_bias)
    if x_residual is None:
        return norm.rms_norm(reduced, weight, epsilon, variance_size, weight_bias), reduced
    return norm.add_rms_norm(
        reduced, x_residual, weight, epsilon, variance_size, weight_bias, out=reduced
    )
