"""What makes a compiled graph stale, across processes and within one.

Across processes (Inductor's on-disk cache): fusion runs in Inductor's
``joint_custom_pre_pass`` and plans the lowering on a copy of the graph,
*before* Inductor computes its FX-graph cache key; the lowering pass's
``uuid()`` (part of that key) is the digest of the planned lowered graph —
every native impl traced into ATen (with whatever helpers it calls, in any
module), the clones donation left, the contiguity workarounds. What the graph
cannot show is the code behind a custom-op kernel it calls (a C++ or Triton
kernel): :func:`kernel_digest` adds, for every impl whose traced code calls
such an op, the impl's module source, the kernel sources next to it
(``*.cpp``, ``*.cu``, ...) and, if the impl function has one, its
``__opir_kernel_version__`` (a string or a zero-argument callable, e.g. a
build key). Before the plan exists ``uuid()`` is None, which makes
AOTAutograd's cache (keyed before any of this) step aside.

Within a process: each compiled graph remembers the state its lowering
depended on — the compile priority and impl identity of the ops *it* lowered
(:func:`lowering_state`; identity is the Impl's never-reused ``serial``, not
``id(fn)``, which a re-registered function can get again once the old one is
freed) — and recompiles only when that changes, keeping at
most :data:`MAX_VARIANTS` variants (least recently used goes first). The
state is recomputed only when the registry epoch or the scope changes, so the
per-call cost is a counter and a context variable read. Threads calling one
compiled function with different scoped priorities each get their own variant;
recomputing and (re)lowering hold Dynamo's compile lock, so they never run
concurrently with each other or with Dynamo compiling. A re-lowering also runs
as a torch compile session (:mod:`opir.compiler.session`). Without it, a
thread calling a compiled function while another thread re-lowers would take
that thread's FX trace for its own and fail.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import marshal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from opir.compiler.session import compile_session
from opir.core import scope as _scope
from opir.core.impl import Impl
from opir.core.op import Op
from opir.core.registry import epoch

MAX_VARIANTS = 4


def _compile_lock() -> Any:
    """Dynamo's compile lock (imported late: Dynamo is heavy and loaded on first compile)."""
    from torch._dynamo.convert_frame import compile_lock

    return compile_lock


_KERNEL_SUFFIXES = (".cpp", ".cc", ".c", ".cu", ".cuh", ".h", ".hpp")


def kernel_digest(impl: Impl) -> str:
    """Identity of the kernel code behind ``impl`` that a traced graph cannot show."""
    digest = hashlib.sha256(f"{impl.op_name}/{impl.provider}".encode())
    module = inspect.getmodule(impl.fn)
    path = Path(getattr(module, "__file__", "") or "")
    if path.is_file():
        digest.update(path.read_bytes())
        for sibling in sorted(path.parent.iterdir()):
            if sibling.suffix in _KERNEL_SUFFIXES:
                digest.update(sibling.name.encode() + sibling.read_bytes())
    elif hasattr(impl.fn, "__code__"):  # no source file (a notebook cell, exec): the code
        digest.update(marshal.dumps(impl.fn.__code__))
    version = getattr(impl.fn, "__opir_kernel_version__", None)
    if callable(version):
        version = version()
    if version is not None:
        digest.update(str(version).encode())
    return digest.hexdigest()


def lowering_state(ops: Iterable[Op], fixed: Mapping[Op, tuple[str, ...]]) -> tuple:
    """The compile priority and impl identities of ``ops``, by value."""
    state = []
    for op in sorted(set(ops), key=lambda o: o.name):
        priority = op.compile_priority(fixed.get(op))
        state.append((op.name, tuple((i.provider, i.serial) for i in priority.impls)))
    return tuple(state)


def dispatch_key() -> tuple:
    """Changes whenever any priority, impl or scope might have changed (cheap)."""
    scope = _scope.current.get()
    return (epoch(), scope.priority_key if scope is not None else ())


class Variants:
    """Compiled variants of one graph, by lowering state, least recently used first."""

    def __init__(self, compile_for: Callable[[], tuple[Callable[..., Any], Iterable[Op]]],
                 fixed: Mapping[Op, tuple[str, ...]]) -> None:  # fmt: skip
        self._compile_for = compile_for
        self._fixed = fixed
        self._by_state: collections.OrderedDict[tuple, Callable[..., Any]] = (
            collections.OrderedDict()
        )
        self._ops: tuple[Op, ...] = ()
        self._last: tuple[tuple, Callable[..., Any]] | None = None
        self.compiles = 0

    def current(self) -> Callable[..., Any]:
        key = dispatch_key()
        last = self._last  # one read: another thread may replace it at any time
        if last is not None and last[0] == key:
            return last[1]
        # Lowering traces with FX and compiles, which is neither thread-safe nor
        # safe beside Dynamo compiling another frame: hold Dynamo's own compile
        # lock (reentrant: a lowering started inside a Dynamo compile proceeds).
        with _compile_lock():
            return self._current(key)

    def _current(self, key: tuple) -> Callable[..., Any]:
        state = lowering_state(self._ops, self._fixed)
        fn = self._by_state.get(state)
        if fn is None:
            # A compile session, as Dynamo opens for a frame: threads calling
            # compiled functions meanwhile must not take our FX traces for theirs.
            with compile_session():
                fn, ops = self._compile_for()
            self.compiles += 1
            self._ops = tuple(ops)
            state = lowering_state(self._ops, self._fixed)
            self._by_state[state] = fn
            while len(self._by_state) > MAX_VARIANTS:
                self._by_state.popitem(last=False)
        self._by_state.move_to_end(state)
        self._last = (key, fn)
        return fn

    def __len__(self) -> int:
        return len(self._by_state)
