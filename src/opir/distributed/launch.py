"""Run a function on N spawned local ranks and collect what each returns.

For tests and benchmarks on one machine (``torchrun`` is the launcher for
real jobs). Rendezvous goes through a FileStore in a fresh temporary
directory, so no TCP port has to be picked (gloo's own connections use ports
the OS assigns). Every run has a deadline; stragglers are killed. ``fn`` must
be importable by the spawned processes (a module-level function).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any


def _entry(rank, world_size, store, fn, args, results, tp_timeout):
    from opir.distributed import destroy_tp, init_tp

    failed = True
    try:
        init_tp(rank, world_size, init_method=f"file://{store}", timeout=tp_timeout)
        results.put((rank, "ok", fn(rank, world_size, *args)))
        failed = False
    except BaseException as e:  # report everything to the parent
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        destroy_tp(wait_for_peers=not failed)  # a failed rank lets its peers go at once


def run_on_ranks(
    world_size: int,
    fn: Callable[..., Any],
    *args: Any,
    ranks: Sequence[int] | None = None,
    deadline_s: float = 240,
    tp_timeout: float = 30,
) -> dict[int, tuple[str, Any]]:
    """{rank: ("ok", result) or ("error", text)} for the started ``ranks`` (default all)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    with tempfile.TemporaryDirectory(prefix="opir-tp-") as directory:
        store = os.path.join(directory, "store")
        processes = [
            context.Process(
                target=_entry, args=(r, world_size, store, fn, args, results, tp_timeout)
            )
            for r in ranks
        ]
        for process in processes:
            process.start()
        collected: dict[int, tuple[str, Any]] = {}
        end = time.monotonic() + deadline_s
        while len(collected) < len(ranks) and time.monotonic() < end:
            try:
                rank, status, value = results.get(timeout=1)
                collected[rank] = (status, value)
            except queue.Empty:
                if all(not p.is_alive() for p in processes) and results.empty():
                    break
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    for rank in ranks:
        collected.setdefault(rank, ("error", "no result: the process died or missed the deadline"))
    return collected
