"""The result of checking one provider: one outcome per op x check, as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One check of one op: ``status`` and what it means in ``detail``.

    ``cases``: calls made; ``declined``: those the provider's ``supports_args``
    turned down (native ran instead, which is allowed); ``seconds``: wall time.
    """

    op: str
    check: str
    status: Status
    detail: str = ""
    cases: int = 0
    declined: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class Report:
    """Every outcome for one provider, in run order."""

    provider: str
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    @property
    def passed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "pass"]

    @property
    def ok(self) -> bool:
        """No failure, and at least one check ran (a grid of skips checked nothing)."""
        return not self.failures and bool(self.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "outcomes": [dataclasses.asdict(o) for o in self.outcomes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"opir check {self.provider}: each op's impl against native")
        for column in ("op", "check", "result", "cases", "s"):
            table.add_column(column, no_wrap=True, justify="right" if column == "s" else "left")
        table.add_column("detail")
        previous = None
        for o in self.outcomes:
            mark = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]"}.get(
                o.status, "[yellow]skipped[/yellow]"
            )
            taken = f"{o.cases - o.declined}/{o.cases}" if o.cases else "-"
            name = o.op if o.op != previous else ""
            previous = o.op
            table.add_row(name, o.check, mark, taken, f"{o.seconds:.1f}", escape(o.detail))
        summary = (
            f"{len(self.passed)} passed, {len(self.failures)} failed, "
            f"{len(self.outcomes) - len(self.passed) - len(self.failures)} skipped. "
            "cases n/m: the provider took n of m calls and declined the rest through "
            "supports_args (native ran them)."
        )
        if not self.failures and not self.passed:
            summary += " Nothing was checked: see the reasons above."
        return Group(table, Text(summary))
