"""Choosing the impl for one call: the first in the priority whose predicate accepts.

The eager hot path inlines the plain walk; this module is the full version,
used where someone wants to know *why*: tracing, strict mode, the compile-time
lowering and ``op.dispatch``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from opir.core.errors import DispatchError
from opir.core.impl import Impl

if TYPE_CHECKING:
    from opir.core.priority import Priority
    from opir.core.scope import Scope

PREDICATE_FALSE = "supports_args returned False"


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen impl and, in order, (provider, why) for every provider passed over:
    those dropped as unsupported when the priority was built, then those whose
    predicate rejected these arguments."""

    impl: Impl
    rejected: tuple[tuple[str, str], ...]


def explain(priority: Priority, args: tuple) -> Selection:
    rejected = list(priority.dropped)
    for impl in priority.impls:
        if impl.supports_args is None or impl.supports_args(*args):
            return Selection(impl, tuple(rejected))
        rejected.append((impl.provider, PREDICATE_FALSE))
    raise AssertionError("a priority always ends with an unconditional impl")


def select_in_scope(
    op_name: str, overload: str, priority: Priority, args: tuple, scope: Scope | None, path: str
) -> Impl:
    """Select for a real call: record it when tracing, refuse fallbacks in strict mode."""
    selection = explain(priority, args)
    if scope is None:
        return selection.impl
    chosen = selection.impl
    if scope.tracer is not None:
        scope.tracer.record(op_name, overload, chosen.provider, path, selection.rejected, args)
    if scope.strict and chosen.provider != priority.preferred:
        why = "; ".join(f"{p}: {r}" for p, r in selection.rejected) or "not in the filtered list"
        raise DispatchError(
            f"strict mode: op '{op_name}' would fall back from preferred provider "
            f"'{priority.preferred}' to '{chosen.provider}' ({why}). Fix the inputs, change "
            "the priority, or leave strict mode."
        )
    return chosen
