"""Tensor parallelism over torch.distributed (gloo on CPU, NCCL on GPU)."""

from opir.distributed.collectives import all_gather, all_reduce
from opir.distributed.group import TPError, destroy_tp, init_tp, tp_rank, tp_world_size
from opir.distributed.helpers import shard

__all__ = [
    "TPError",
    "all_gather",
    "all_reduce",
    "destroy_tp",
    "init_tp",
    "shard",
    "tp_rank",
    "tp_world_size",
]
