"""The tensor-parallel group: set-up, tear-down, rank and world size.

The TP group is the default process group (every rank takes part). Without
an initialised group everything behaves as world size 1, so single-device
code needs no changes. Every collective and the rendezvous have a timeout
(``timeout=`` or ``$OPIR_TP_TIMEOUT`` seconds, default 60): a rank that dies
or never joins makes the others fail with :class:`TPError` in bounded time.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from opir.core.errors import OpirError

DEFAULT_TIMEOUT_S = 60.0
_state = {"owned": False, "check_shapes": True}


class TPError(OpirError, RuntimeError):
    """A tensor-parallel set-up or collective failed (peer crashed, hung, or disagreed)."""


def _timeout(timeout: float | datetime.timedelta | None) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        return timeout
    seconds = float(
        os.environ.get("OPIR_TP_TIMEOUT", DEFAULT_TIMEOUT_S) if timeout is None else timeout
    )
    return datetime.timedelta(seconds=seconds)


def init_tp(
    rank: int | None = None,
    world_size: int | None = None,
    *,
    init_method: str | None = None,
    backend: str | None = None,
    timeout: float | datetime.timedelta | None = None,
    check_shapes: bool = True,
) -> None:
    """Join the TP group: from torchrun's environment, or explicit rank/world_size.

    ``backend`` defaults to NCCL when CUDA is available, else gloo.
    ``check_shapes`` exchanges each collective's shape and dtype first, so
    ranks that disagree get a TPError instead of a silently wrong sum (gloo
    reduces the common prefix); it costs one small all-gather per collective.
    """
    if dist.is_initialized():
        raise TPError("a torch.distributed process group already exists; call destroy_tp() first")
    if rank is None or world_size is None:
        missing = [v for v in ("RANK", "WORLD_SIZE") if v not in os.environ]
        if missing:
            raise TPError(
                f"init_tp() needs rank and world_size, or the torchrun variables {missing} "
                "(launch with `torchrun --nproc-per-node N script.py`)"
            )
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not 0 <= rank < world_size:
        raise TPError(f"rank {rank} is not in [0, {world_size})")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    limit = _timeout(timeout)
    try:
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=rank,
            world_size=world_size,
            timeout=limit,
        )
    except Exception as e:
        raise TPError(
            f"rank {rank} of {world_size} could not join the TP group within "
            f"{limit.total_seconds():.0f}s ({type(e).__name__}: {e}). Check that all "
            f"{world_size} ranks were started with the same rendezvous settings."
        ) from e
    _state["owned"] = True
    _state["check_shapes"] = check_shapes


def destroy_tp() -> None:
    """Leave the TP group (no-op if none was initialised by init_tp).

    All ranks meet at a barrier first: a rank that tore its group down while a
    peer was still finishing the last collective made gloo abort the peer
    ("terminate called without an active exception"). A barrier that fails
    because a peer is already gone is ignored; leaving must still succeed.
    """
    if dist.is_initialized() and _state["owned"]:
        with contextlib.suppress(Exception):  # a dead or departed peer: nothing to wait for
            dist.barrier()
        dist.destroy_process_group()
    _state["owned"] = False


def tp_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def tp_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def shape_checks_enabled() -> bool:
    return _state["check_shapes"]
