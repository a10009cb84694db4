"""all_reduce / all_gather as torch custom ops (``torch.ops.opir_dist.*``).

Being custom ops with fake implementations, they are single nodes in
Dynamo/AOT graphs, which is what the all-reduce + norm fusion matches. They
are functional (inputs untouched, fresh outputs). Errors from the backend
(a peer crashed or hung, or ranks disagree on shapes) become TPError.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from opir.distributed.group import TPError, shape_checks_enabled, tp_rank, tp_world_size

_META_LEN = 11  # dtype code, ndim, 8 leading dims, hash of every dim
_DTYPE_CODES = {
    dtype: code
    for code, dtype in enumerate(
        sorted(
            (d for d in vars(torch).values() if isinstance(d, torch.dtype)),
            key=str,
        )
    )
}
"""One code per torch dtype (aliases such as torch.float/float32 share one object)."""


def _dtype_code(dtype: torch.dtype) -> int:
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise TPError(
            f"collectives do not know the dtype {dtype}; pass one of the torch dtypes "
            f"({', '.join(sorted({str(d) for d in _DTYPE_CODES}))})"
        ) from None


def _metadata(x: torch.Tensor) -> torch.Tensor:
    """dtype, ndim, the first 8 dims and a hash of all dims: equal on every rank
    exactly when shapes and dtypes agree (up to a 63-bit hash collision beyond 8 dims)."""
    shape = list(x.shape)
    leading = shape[:8] + [0] * (8 - min(len(shape), 8))
    digest = (
        int.from_bytes(hashlib.blake2b(repr(shape).encode(), digest_size=8).digest(), "little") >> 1
    )
    return torch.tensor([_dtype_code(x.dtype), len(shape), *leading, digest], dtype=torch.int64)


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
