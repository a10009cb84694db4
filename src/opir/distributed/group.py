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
import math
import os
import sys

import torch
import torch.distributed as dist

from opir.core.errors import OpirError

DEFAULT_TIMEOUT_S = 60.0
TEARDOWN_BARRIER_S = 5.0
"""Longest destroy_tp waits for the peers; a peer that raised may never arrive."""
_state = {"owned": False, "check_shapes": True}


class TPError(OpirError, RuntimeError):
    """A tensor-parallel set-up or collective failed (peer crashed, hung, or disagreed)."""


def _timeout(timeout: float | datetime.timedelta | None) -> datetime.timedelta:
    seconds: float | str  # the environment variable arrives as text
    if isinstance(timeout, datetime.timedelta):
        seconds, source = timeout.total_seconds(), "timeout="
    elif timeout is None:
        raw = os.environ.get("OPIR_TP_TIMEOUT")
        seconds, source = (DEFAULT_TIMEOUT_S if raw is None else raw), "$OPIR_TP_TIMEOUT"
    else:
        seconds, source = timeout, "timeout="
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise TPError(
            f"{source} must be a positive finite number of seconds (e.g. 60 or 2.5), "
            f"got {seconds!r}"
        )
    return datetime.timedelta(seconds=value)


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


def destroy_tp(wait_for_peers: bool | None = None) -> None:
    """Leave the TP group (no-op if none was initialised by init_tp).

    On a normal exit all ranks meet at a barrier first: a rank that tore its
    group down while a peer was still finishing the last collective made gloo
    abort the peer ("terminate called without an active exception"). The wait
    is bounded by ``TEARDOWN_BARRIER_S`` (a peer that raised instead of dying
    may never reach it), and skipped when this rank is unwinding from an
    exception: its peers are then stuck or failing anyway and must not hold it
    for the collective timeout. ``wait_for_peers`` overrides that choice (pass
    False from an ``except`` block that has already handled the error).
    A failed barrier is ignored; leaving must succeed.
    """
    if wait_for_peers is None:
        wait_for_peers = sys.exc_info()[0] is None
    if dist.is_initialized() and _state["owned"]:
        if wait_for_peers:
            with contextlib.suppress(Exception):  # a dead or departed peer: nothing to wait for
                _bounded_barrier(TEARDOWN_BARRIER_S)
        dist.destroy_process_group()
    _state["owned"] = False


def _bounded_barrier(seconds: float) -> None:
    if dist.get_backend() == "gloo":  # gloo's barrier takes its own timeout
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=seconds))
    else:
        dist.barrier(async_op=True).wait(datetime.timedelta(seconds=seconds))


def tp_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def tp_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def shape_checks_enabled() -> bool:
    return _state["check_shapes"]
