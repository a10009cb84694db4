"""Which impl ran and why: the records of ``opir.trace()`` (entered in ``scope.py``)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class DispatchRecord:
    """One traced call.

    ``op``: op name; ``overload``: "default" or "maybe_inplace"; ``provider``:
    what ran; ``path``: "eager" (Python fast path) or "torch_op" (through the
    torch dispatcher); ``rejected``: (provider, why) for each provider skipped
    before it, in order; ``signature``: dtypes and shapes of the tensor args.
    """

    op: str
    overload: str
    provider: str
    path: str
    rejected: tuple[tuple[str, str], ...]
    signature: str


class Trace:
    """Records one :class:`DispatchRecord` per op call made inside ``opir.trace()``."""

    def __init__(self) -> None:
        self.records: list[DispatchRecord] = []

    def record(
        self,
        op: str,
        overload: str,
        provider: str,
        path: str,
        rejected: tuple[tuple[str, str], ...],
        args: tuple,
    ) -> None:
        """Append the record of one call (called by dispatch)."""
        self.records.append(DispatchRecord(op, overload, provider, path, rejected, _describe(args)))

    def providers(self, op: str | None = None) -> list[str]:
        """The providers that ran, in call order (optionally for one op)."""
        return [r.provider for r in self.records if op is None or r.op == op]

    def __iter__(self) -> Iterator[DispatchRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"opir dispatch trace ({len(self.records)} calls)")
        for column in ("#", "op", "ran", "path", "rejected", "args"):
            table.add_column(column)
        for n, r in enumerate(self.records):
            rejected = "\n".join(f"{p}: {why}" for p, why in r.rejected) or "-"
            name = r.op if r.overload == "default" else f"{r.op}.{r.overload}"
            table.add_row(str(n), name, r.provider, r.path, rejected, r.signature)
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=120, color_system=None).print(self)
        return buffer.getvalue()


def _describe(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            dtype = str(a.dtype).removeprefix("torch.")
            parts.append(f"{dtype}{list(a.shape)}")
    return " ".join(parts)
