"""One provider's implementation of one op."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, eq=False)
class Impl:
    """A registered kernel.

    ``supported`` is static (platform / library availability); ``reason`` says
    why not when it is False. ``supports_args`` is the per-call argument check
    (None means "accepts everything"). ``inplace`` impls may write into the
    op's activations and return them.
    """

    op_name: str
    provider: str
    fn: Callable
    supported: bool = True
    supports_args: Callable[..., bool] | None = None
    inplace: bool = False
    reason: str = ""

    @property
    def unconditional(self) -> bool:
        return self.supports_args is None

    def __repr__(self) -> str:
        flags = "" if self.supported else f", unsupported: {self.reason}"
        return f"Impl({self.op_name}/{self.provider}{', inplace' if self.inplace else ''}{flags})"
