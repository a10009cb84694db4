"""What the registry, priorities and overloads need of an op, as a Protocol.

:class:`~opir.core.op.Op` satisfies it. Those modules are imported by ``op``,
so naming ``Op`` in their annotations would make the core's modules import
each other in a circle (even if only for type checkers); they name this
instead, and ``op`` stays the one module on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opir.core.impl import Impl


class OpLike(Protocol):
    """The parts of an op that the modules below ``opir.core.op`` use."""

    name: str
    sig: Any  # an OpSignature (signature.py sits above this module)
    activation_positions: tuple[int, ...]
    backward_error: str
    maybe_inplace: Any  # the op's MaybeInplace overload, or None

    @property
    def impls(self) -> Mapping[str, Impl]: ...

    def refresh_priority(self) -> None: ...

    def current_priority(self) -> Any: ...  # a Priority (priority.py imports this module)

    def complete_args(self, args: tuple, kwargs: Mapping[str, Any] | None = None) -> tuple: ...

    def set_default(self, providers: Sequence[str]) -> None: ...

    def get_priority(self) -> list[str]: ...
