"""The per-thread / per-asyncio-task dispatch scope.

One ContextVar holds everything a ``with`` block can change about dispatch:
priority overrides, the active tracer and strict mode. Its default is None,
so the eager hot path pays a single ``ContextVar.get`` to learn that nothing
is scoped. Threads start with an empty context and asyncio tasks copy theirs
at creation, which gives the isolation the priority API promises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opir.core.chain import Chain
    from opir.core.trace import Trace


@dataclasses.dataclass(frozen=True)
class Scope:
    chains: Mapping[Any, Chain] = dataclasses.field(default_factory=dict)  # Op -> Chain
    tracer: Trace | None = None
    strict: bool = False

    @functools.cached_property
    def priority_key(self) -> tuple:
        """What the scoped priorities are, by value (for compile-cache staleness)."""
        return tuple(sorted((op.name, chain.user) for op, chain in self.chains.items()))


current: ContextVar[Scope | None] = ContextVar("opir_scope", default=None)


@contextlib.contextmanager
def entered(**changes: Any) -> Iterator[Scope]:
    """Enter a scope derived from the current one; restored on any exit."""
    scope = dataclasses.replace(current.get() or Scope(), **changes)
    token = current.set(scope)
    try:
        yield scope
    finally:
        current.reset(token)


@contextlib.contextmanager
def overriding(chains: Mapping[Any, Chain]) -> Iterator[None]:
    """Enter a scope whose priority chains for some ops are replaced."""
    merged = dict((current.get() or Scope()).chains)
    merged.update(chains)
    with entered(chains=merged):
        yield
