"""all_reduce / all_gather as torch custom ops (``torch.ops.opir_dist.*``).

Being custom ops with fake implementations, they are single nodes in
Dynamo/AOT graphs, which is what the all-reduce + norm fusion matches. They
are functional (inputs untouched, fresh outputs). Errors from the backend
(a peer crashed or hung, or ranks disagree on shapes) become TPError.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from opir.distributed.group import TPError, shape_checks_enabled, tp_rank, tp_world_size

_META_LEN = 10  # dtype code, ndim, up to 8 dims (more dims: checked as their product)
_DTYPE_CODES = {
    dtype: i
    for i, dtype in enumerate(
        (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32)
    )
}


def _metadata(x: torch.Tensor) -> torch.Tensor:
    shape = list(x.shape)
    dims = shape[:8] if len(shape) <= 8 else [*shape[:7], int(torch.tensor(shape[7:]).prod())]
    codes = [_DTYPE_CODES.get(x.dtype, -1), len(shape), *dims]
    return torch.tensor(codes + [0] * (_META_LEN - len(codes)), dtype=torch.int64)


def _check_same_everywhere(x: torch.Tensor, what: str) -> None:
    mine = _metadata(x)
    gathered = [torch.empty_like(mine) for _ in range(tp_world_size())]
    dist.all_gather(gathered, mine)
    if any(not torch.equal(g, mine) for g in gathered):
        raise TPError(
            f"{what}: ranks disagree on the tensor's shape/dtype; rank {tp_rank()} has "
            f"{list(x.shape)} {x.dtype}. Every rank must pass the same shape and dtype."
        )


def _run(what: str, fn):
    try:
        return fn()
    except TPError:
        raise
    except Exception as e:
        raise TPError(
            f"{what} failed on rank {tp_rank()} of {tp_world_size()}: {type(e).__name__}: {e}. "
            "A peer rank probably crashed, hung or timed out; see its log."
        ) from e


@torch.library.custom_op("opir_dist::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the TP ranks (a copy of ``x`` at world size 1)."""
    out = x.contiguous().clone()
    if tp_world_size() > 1:

        def reduce() -> None:
            if shape_checks_enabled():
                _check_same_everywhere(out, "all_reduce")
            dist.all_reduce(out)

        _run("all_reduce", reduce)
    return out


@all_reduce.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("opir_dist::all_gather", mutates_args=())
def all_gather(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenation of every rank's ``x`` along ``dim``, in rank order."""
    world = tp_world_size()
    if world == 1:
        return x.clone()
    source = x.contiguous()
    parts = [torch.empty_like(source) for _ in range(world)]

    def gather() -> None:
        if shape_checks_enabled():
            _check_same_everywhere(source, "all_gather")
        dist.all_gather(parts, source)

    _run("all_gather", gather)
    return torch.cat(parts, dim=dim)


@all_gather.register_fake
def _(x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] *= tp_world_size()
    return x.new_empty(shape)
