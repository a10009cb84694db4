"""Weight sharding for tensor-parallel layers (the TP layer code lives in opir.layers.tp)."""

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
