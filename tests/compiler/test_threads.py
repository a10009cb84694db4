"""One compiled function called from several threads, each with its own scoped
priority: every thread gets its own priority's answer, and (re)lowering never
runs concurrently with another lowering or with Dynamo's compiler."""

from __future__ import annotations

import threading

import pytest
import torch

import opir

pytestmark = pytest.mark.slow


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _adding(i: int):
    def impl(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + i

    return impl


@pytest.mark.parametrize(("inductor", "threads"), [(False, 4), (True, 2)])
def test_threads_with_different_scoped_priorities_share_one_compiled_function(
    make_op, inductor, threads
):
    """Expected: each thread's calls give its own priority's result. Actual: the
    threads' re-lowerings ran at once, outside Dynamo's compile lock, and crashed
    ("CURRENT_PATCHER is None", "FX to symbolically trace a dynamo-optimized
    function")."""
    op = make_op(_double)
    for i in range(threads):
        op.register_impl(f"p{i}")(_adding(i + 1))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: op(x) * 3, backend=opir.backend(inductor=inductor))
    x = torch.ones(4)
    compiled(x)  # the Dynamo graph exists; the threads re-lower it concurrently
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    wrong: list[tuple[int, torch.Tensor]] = []

    def worker(i: int) -> None:
        try:
            with opir.priority({op.name: [f"p{i}"]}):
                start.wait(timeout=60)
                for _ in range(4):
                    y = compiled(x)
                    if not torch.equal(y, (x * 2 + i + 1) * 3):
                        wrong.append((i, y))
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers), "a thread hung"
    assert not errors, errors
    assert not wrong, wrong
