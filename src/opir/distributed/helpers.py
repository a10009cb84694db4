"""Eager helpers and weight sharding for tensor-parallel layers."""

from __future__ import annotations

import torch

from opir.distributed.group import tp_rank, tp_world_size


def shard(
    full: torch.Tensor, rank: int | None = None, world_size: int | None = None, dim: int = -1
):
    """Rank ``rank``'s contiguous slice of ``full`` along ``dim`` (a view)."""
    rank = tp_rank() if rank is None else rank
    world_size = tp_world_size() if world_size is None else world_size
    size = full.shape[dim]
    if size % world_size:
        raise ValueError(
            f"cannot shard a dimension of size {size} over {world_size} ranks: "
            f"{size} is not divisible by {world_size}"
        )
    part = size // world_size
    return full.narrow(dim, rank * part, part)


def fused_allreduce_rms_norm(hidden_states: torch.Tensor, residual: torch.Tensor | None, norm):
    """``norm(all_reduce(hidden_states), residual)`` for RMSNorm / GemmaRMSNorm.

    At world size 1 this is the norm itself. Otherwise it calls the
    ``all_reduce_rms_norm`` op (with the raw weight and ``weight_bias=1.0``
    for Gemma), whose priority picks a fused kernel where one fits and the
    unfused native sequence otherwise. Returns what the norm returns: ``out``,
    or ``(out, residual)`` when a residual is given.
    """
    from opir.layers import RMSNorm
    from opir.ops import all_reduce_rms_norm

    if not isinstance(norm, RMSNorm):
        raise TypeError(
            f"fused_allreduce_rms_norm needs an opir RMSNorm/GemmaRMSNorm, got {type(norm)}"
        )
    if tp_world_size() == 1:
        return norm(hidden_states) if residual is None else norm(hidden_states, residual)
    out, residual_out = all_reduce_rms_norm(
        hidden_states,
        residual,
        norm.weight,
        norm.variance_epsilon,
        norm.weight_bias,
        norm.variance_size,
    )
    return out if residual is None else (out, residual_out)
