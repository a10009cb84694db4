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
from opir.ops.checks import check_all_reduce_args


def all_reduce_rms_norm(
    x, x_residual, weight, epsilon, variance_size, weight_bias, *, traceable=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``all_reduce_rms_norm`` contract (the op's parameters positionally).
    ``traceable``: call the custom ops (for make_fx / lowering) instead of
    launching the kernel directly."""
    check_all_reduce_args(x, x_residual, weight, variance_size, weight_bias)
    reduced = all_reduce(x)
    args = (weight, epsilon, variance_size, weight_bias)
    if traceable:
        ops = torch.ops.opir_triton
        if x_residual is None:
            return ops.rms_norm.default(reduced, *args), reduced
        return ops.fused_add_rms_norm.default(reduced, x_residual, *args)
    if x_residual is None:
        return norm.rms_norm(reduced, *args), reduced
    return norm.add_rms_norm(reduced, x_residual, *args, out=reduced)


def traceable_all_reduce_rms_norm(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``all_reduce_rms_norm`` through the custom ops (what lowering records)."""
    return all_reduce_rms_norm(*args, traceable=True)
