"""Re-lowering runs as a torch compile session, so other threads' calls don't fail.

The problem: torch's "is an FX trace running?" flag
(``torch.fx._symbolic_trace._is_fx_tracing_flag``) is one global for the
whole process. Every FX tracer sets it while it runs, ``make_fx`` included,
and a re-lowering runs ``make_fx`` twice over: AOTAutograd traces the graph,
and opir's lowering traces each chosen impl. Dynamo's wrapper around a compiled function checks
``is_fx_symbolic_tracing()`` before it takes any lock and raises "Detected
that you are using FX to symbolically trace a dynamo-optimized function". So
when thread A re-lowers a graph because its scoped priority changed (at call
time, in :meth:`opir.compiler.cache.Variants.current`), thread B calling any
compiled function at the same moment took A's trace for its own, and failed.
A lock on opir's side cannot help: B fails on entering Dynamo's wrapper,
before any opir code runs.

The fix, :func:`compile_session`, is the one torch 2.13 uses for its own
compiles. ``is_fx_symbolic_tracing()`` is ``flag and not
torch.compiler.is_compiling()``. Dynamo runs each frame's compile (AOTAutograd,
Inductor, our backend's first lowering) inside
``torch.compiler._compile_session_context()``, under its compile lock. That
context makes ``is_compiling()`` true, and the check false in every thread,
for as long as the compile takes. Re-lowering is the same kind of compile: it
holds the same lock and runs the same passes, only outside Dynamo's frame
callback. So it enters the same context. Other threads then see exactly what
they see while torch compiles a frame, and the re-lowering's passes see what
the first lowering saw (``is_compiling()`` true). A user who really FX-traces
a compiled function in their own thread gets the same error as before: the
session is active only while opir re-lowers, and that code never runs inside
the user's trace.

Alternatives considered and rejected:

* Lowering without FX at run time (tracing each impl once up front, or direct
  graph surgery): this does not cover the problem. A re-lowering reruns
  AOTAutograd, which traces with ``make_fx`` itself.
  Traces also depend on the graph's fake values and on a priority that is
  first known at call time.
* Replacing ``is_fx_symbolic_tracing`` with a thread-aware wrapper: Dynamo's
  wrapper keeps a reference to the function it saw when ``torch.compile``
  wrapped the callable (``eval_frame.py``, ``_TorchDynamoContext.__call__``).
  Functions compiled before the patch would still fail. Dynamo also keys its
  constant folding of that function by the function object, so a wrapper
  would need care inside compiled code too.

The cost: ``_compile_session_context`` is private, and so is the
``_is_compiling_flag`` it sets. The torch pin (2.13.x) covers both, and
``tests/compiler/test_threads.py`` fails if either changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def compile_session() -> Iterator[None]:
    """A torch compile session, as Dynamo opens for each frame it compiles.

    Only for code that holds Dynamo's compile lock: the context saves and
    restores one process-wide flag, and the lock keeps the sessions nested.
    """
    with torch.compiler._compile_session_context():
        yield
