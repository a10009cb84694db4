"""One compiled function called from several threads, each with its own scoped
priority: every thread gets its own priority's answer, and (re)lowering never
runs concurrently with another lowering or with Dynamo's compiler."""

from __future__ import annotations

import threading

import pytest
import torch

import opir
from opir.compiler.session import compile_session

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


def test_call_from_another_thread_while_a_relowering_traces(make_op):
    """Expected: a thread calling a compiled function while another thread's
    re-lowering is inside its FX trace gets its answer. Actual: it raised "FX to
    symbolically trace a dynamo-optimized function": torch's FX-tracing flag is
    process-global, and Dynamo's wrapper read the re-lowering's trace as the
    caller's own (fails ~1 run in 2 above; forced here)."""
    op = make_op(_double)
    tracing, release = threading.Event(), threading.Event()

    @op.register_impl("blocking")
    def blocking(x: torch.Tensor) -> torch.Tensor:
        if not tracing.is_set():  # the first call is the re-lowering's trace
            tracing.set()
            release.wait(timeout=60)
        return x * 2 + 1

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: op(x) * 3, backend=opir.backend(inductor=False))
    x = torch.ones(4)
    # The default variant, and the last key: the call below reuses it without a lock.
    assert torch.equal(compiled(x), x * 6)
    errors: list[BaseException] = []
    results: list[torch.Tensor] = []

    def relower() -> None:
        try:
            with opir.priority({op.name: ["blocking"]}):
                results.append(compiled(x))
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=relower, daemon=True)
    thread.start()
    try:
        assert tracing.wait(timeout=120), "the re-lowering never traced the impl"
        overlapping = compiled(x)  # the other thread is blocked inside make_fx now
        assert not release.is_set() and thread.is_alive()
    finally:
        release.set()
        thread.join(timeout=120)
    assert not thread.is_alive(), "the re-lowering hung"
    assert torch.equal(overlapping, x * 6)
    assert not errors, errors
    assert len(results) == 1 and torch.equal(results[0], (x * 2 + 1) * 3)


def test_compile_session_hides_traces_from_dynamos_check_and_only_while_open(make_op):
    """The torch internals compile_session relies on (it fails if torch renames
    or changes them): inside a session, a make_fx trace does not count as FX
    symbolic tracing; outside one it does, and a user who FX-traces a compiled
    function still gets Dynamo's error."""
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing
    from torch.fx.experimental.proxy_tensor import make_fx

    seen: list[tuple[bool, bool]] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.fx._symbolic_trace._is_fx_tracing_flag, is_fx_symbolic_tracing()))
        return x + 1

    with compile_session():
        assert torch.compiler.is_compiling()
        make_fx(probe)(torch.ones(2))
    assert not torch.compiler.is_compiling()
    make_fx(probe)(torch.ones(2))
    assert seen == [(True, False), (True, True)]

    op = make_op(_double)
    compiled = torch.compile(lambda x: op(x) * 3, backend=opir.backend(inductor=False))
    with pytest.raises(RuntimeError, match="FX to symbolically trace a dynamo-optimized"):
        torch.fx.symbolic_trace(lambda x: compiled(x))
