"""The per-thread / per-asyncio-task dispatch scope, and the ``with`` blocks that
change it: ``trace()`` and ``strict()`` (priority overrides: ``op.set_priority``,
``opir.priority``).

One ContextVar holds everything a ``with`` block can change about dispatch:
priority overrides, the active tracer and strict mode. Its default is None,
so the eager hot path pays a single ``ContextVar.get`` to learn that nothing
is scoped. Threads start with an empty context and asyncio tasks copy theirs
at creation, which gives the isolation the priority API promises.

A scope that only overrides priorities stays on the fast path: it carries,
per overload, the entries the hot path walks (``hot_entries``), so a scoped
call costs one dict lookup more than an unscoped one.

Inside a ``torch.compile`` region a priority scope is not a ContextVar (Dynamo
cannot trace ``ContextVar.get``, and a graph break would defeat
``fullgraph=True``): ``op.set_priority`` and ``opir.priority`` become
:func:`annotated`, which Dynamo traces, and the opir nodes created inside carry
the priority as node metadata; lowering resolves it per node, where it takes
precedence over every other priority (as the innermost scope does eagerly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch

from opir.core.trace import Trace

if TYPE_CHECKING:
    from opir.core.priority import Entry, Priority


@dataclasses.dataclass(frozen=True, eq=False)
class Scope:
    """What a ``with`` block changed about dispatch in this thread / task.

    ``priorities``: op -> the scoped :class:`~opir.core.priority.Priority`;
    ``tracer``: the active :class:`~opir.core.trace.Trace`, if any;
    ``strict``: whether falling back past the preferred provider raises.
    ``hot_entries`` maps each overload object (an op or its ``maybe_inplace``)
    to the entries its fast path walks; ``plain`` is True when neither tracing
    nor strict mode needs the full selection.
    """

    priorities: Mapping[Any, Priority] = dataclasses.field(default_factory=dict)
    tracer: Trace | None = None
    strict: bool = False
    hot_entries: Mapping[Any, tuple[Entry, ...]] = dataclasses.field(default_factory=dict)
    plain: bool = dataclasses.field(init=False)  # a field, not a property: read per call

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", self.tracer is None and not self.strict)

    @functools.cached_property
    def priority_key(self) -> tuple:
        """What the scoped priorities are, by value (for compile-cache staleness)."""
        return tuple(sorted((op.name, p.user) for op, p in self.priorities.items()))


current: ContextVar[Scope | None] = ContextVar("opir_scope", default=None)

_live: weakref.WeakSet[Scope] = weakref.WeakSet()
"""Scopes that override some priority, in any thread (so impl changes reach them)."""


def refresh(op: Any, rebuild: Callable[[Priority], Priority]) -> None:
    """Rebuild ``op``'s priority in every live scope that overrides it.

    A scoped priority is built when the ``with`` block is entered; when the
    op's impls change later (an impl withdrawn after a failed build, one
    unregistered, a new one registered) the scopes must not keep calling what
    the process-wide priority no longer would.
    """
    for scope in list(_live):
        old = scope.priorities.get(op)
        if old is None:
            continue
        new = rebuild(old)
        scope.priorities[op] = new  # type: ignore[index]  # dicts owned by the scopes
        scope.hot_entries[op] = new.functional  # type: ignore[index]
        if op.maybe_inplace is not None:
            scope.hot_entries[op.maybe_inplace] = new.donating  # type: ignore[index]
        scope.__dict__.pop("priority_key", None)


@contextlib.contextmanager
def entered(**changes: Any) -> Iterator[Scope]:
    """Enter a scope derived from the current one; restored on any exit."""
    scope = dataclasses.replace(current.get() or Scope(), **changes)
    if scope.priorities:
        _live.add(scope)
    token = current.set(scope)
    try:
        yield scope
    finally:
        current.reset(token)


@contextlib.contextmanager
def overriding(priorities: Mapping[Any, Priority]) -> Iterator[None]:
    """Enter a scope whose priorities for some ops are replaced."""
    base = current.get() or Scope()
    merged = {**base.priorities, **priorities}
    hot = dict(base.hot_entries)
    for op, priority in priorities.items():
        hot[op] = priority.functional
        if op.maybe_inplace is not None:
            hot[op.maybe_inplace] = priority.donating
    with entered(priorities=merged, hot_entries=hot):
        yield


PRIORITY_ANNOTATION = "opir_priority:"
"""Node metadata key prefix (``node.meta["custom"]``) of an in-graph scoped priority."""


def compiling() -> bool:
    """Whether Dynamo is tracing this code (it folds the call to True). Not other
    tracers: make_fx and non-strict export run the eager scope, which they see."""
    return torch.compiler.is_dynamo_compiling()


def annotated(priorities: Mapping[str, Sequence[str]]) -> Any:
    """The in-graph form of a priority scope: a ``torch.fx.traceback.annotate`` block
    whose nodes carry ``{PRIORITY_ANNOTATION + op name: providers}``. One key per op,
    so nested blocks for different ops combine and an inner block for the same op
    wins. Providers are validated when the graph is lowered."""
    return torch.fx.traceback.annotate(
        {PRIORITY_ANNOTATION + name: tuple(providers) for name, providers in priorities.items()}
    )


def annotated_priority(meta: Mapping[str, Any], op_name: str) -> tuple[str, ...] | None:
    """The in-graph priority recorded in a node's ``meta`` for ``op_name``, if any."""
    custom = meta.get("custom")
    if not isinstance(custom, Mapping):
        return None
    return custom.get(PRIORITY_ANNOTATION + op_name)


@contextlib.contextmanager
def trace(*, strict: bool = False) -> Iterator[Trace]:
    """Record every dispatch in this thread/task; ``strict=True`` also enables strict mode.

    Example::

        with opir.trace() as t:
            opir.ops.rms_norm(x, w, 1e-6)
        print(t)  # a table: op, provider that ran, providers rejected and why
    """
    tracer = Trace()
    changes: dict[str, Any] = {"tracer": tracer}
    if strict:
        changes["strict"] = True
    with entered(**changes):
        yield tracer


@contextlib.contextmanager
def strict() -> Iterator[None]:
    """Raise DispatchError instead of running anything but an op's preferred provider.

    The preferred provider is the first entry of the op's effective priority.
    A provider dropped as unsupported, or whose predicate rejects the call,
    makes the call fail with the reason instead of falling back silently.

    Example::

        with opir.strict():
            opir.ops.rms_norm(x, w, 1e-6)  # DispatchError if 'cpu' cannot take x
    """
    with entered(strict=True):
        yield
