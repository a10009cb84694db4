"""The op registry and the process-wide tables that belong to no single op.

This module owns three pieces of shared state, each changed only through the
functions here: ``ops`` (every registered op by name), the *epoch* (a counter
bumped whenever any op's process-wide priority or impls change, so caches
keyed on it notice) and the platform-default tables (the measured provider
order per op, for eager calls and for compiled graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from opir.core.errors import PriorityError
from opir.core.protocols import OpLike

NAMESPACE = "opir"
"""The ``torch.ops`` namespace of every op (``torch.ops.opir.<name>``)."""

Mode = Literal["eager", "compile"]

ops: dict[str, OpLike] = {}
"""Every registered op by name, in registration order."""

_epoch = 0
_listeners: list[Callable[[OpLike], None]] = []
_platform_defaults: dict[str, dict[str, tuple[str, ...]]] = {"eager": {}, "compile": {}}


def epoch() -> int:
    """A counter that changes whenever a process-wide priority or impl changes."""
    return _epoch


def bump_epoch() -> None:
    global _epoch
    _epoch += 1


def add(op: OpLike) -> None:
    """Record a newly registered op (the last step of registration), then tell listeners."""
    ops[op.name] = op
    for listener in _listeners:
        listener(op)


def on_register(listener: Callable[[OpLike], None]) -> None:
    """Call ``listener(op)`` for every op, registered already or later.

    How a provider that serves *every* op (``inductor``) learns of ops it was
    never told about, without core importing it.
    """
    _listeners.append(listener)
    for op in list(ops.values()):
        listener(op)


def remove(name: str) -> None:
    ops.pop(name, None)


def set_platform_defaults(defaults: Mapping[str, Sequence[str]], *, mode: Mode = "eager") -> None:
    """Declare this process's measured default order per op (providers call this).

    ``mode="compile"`` sets the order the lowering pass of ``opir.compile``
    uses (where Inductor may fuse the native decomposition with neighbours).
    Names of providers that are not registered are skipped when priorities are
    built, so a table may mention optional providers.

    Example::

        opir.set_platform_defaults({"rms_norm": ["triton", "native"]})
    """
    if mode not in _platform_defaults:
        raise PriorityError(
            f"set_platform_defaults: unknown mode {mode!r}; use 'eager' or 'compile'"
        )
    checked = {}
    for op_name, providers in defaults.items():
        if isinstance(providers, str):
            raise PriorityError(
                f"set_platform_defaults: the providers of '{op_name}' must be a list, got "
                f"the string {providers!r}; write [{providers!r}] for one provider"
            )
        if not all(isinstance(p, str) for p in providers):
            raise PriorityError(
                f"set_platform_defaults: the providers of '{op_name}' must be provider "
                f"names (strings), got {providers!r}"
            )
        checked[op_name] = tuple(providers)
    for op_name, providers in checked.items():
        _platform_defaults[mode][op_name] = providers
        op = ops.get(op_name)
        if op is not None:
            op.refresh_priority()


def platform_defaults(op_name: str, mode: Mode = "eager") -> tuple[str, ...]:
    """The platform order for ``op_name`` (compile falls back to eager, then native)."""
    table = _platform_defaults[mode]
    if mode == "compile" and op_name not in table:
        table = _platform_defaults["eager"]
    return table.get(op_name, ("native",))


def snapshot_platform_defaults() -> dict[str, dict[str, tuple[str, ...]]]:
    """A copy of both tables (tests restore it with :func:`restore_platform_defaults`)."""
    return {mode: dict(table) for mode, table in _platform_defaults.items()}


def restore_platform_defaults(saved: Mapping[str, Mapping[str, tuple[str, ...]]]) -> None:
    for mode, table in saved.items():
        _platform_defaults[mode] = dict(table)
    for op in ops.values():
        op.refresh_priority()
