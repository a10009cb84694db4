"""The compile report: what opir's passes did to each graph a backend compiled.

opir's passes run in every process, before Inductor looks up its cache (the
cache key is the lowered graph, see :mod:`opir.compiler.passes`), so a report
is complete even when Inductor serves the code from its on-disk cache;
``from_cache`` only says that it did.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from opir.compiler.fusion import Unfused
from opir.compiler.lowering import Lowered


@dataclasses.dataclass
class GraphReport:
    """What the passes did to one compiled graph.

    ``fusions``: rule -> times fired; ``unfused``: every norm, activation or
    rotation a rule recognised but did not fuse, with the reason and the module
    it came from; ``lowered``: the impl chosen
    per opir node and why the providers before it were passed over;
    ``clones_removed``/``clones_kept``: donation clones; ``donated_inputs``:
    placeholder indices the user donated (``maybe_inplace``);
    ``opir_nodes_left``: opir nodes lowering could not replace (should be 0);
    ``from_cache``: Inductor served the generated code from its cache;
    ``mode``: the ``torch.compile`` mode Inductor compiled it with.
    """

    fusions: dict[str, int] = dataclasses.field(default_factory=dict)
    unfused: list[Unfused] = dataclasses.field(default_factory=list)
    lowered: list[Lowered] = dataclasses.field(default_factory=list)
    clones_removed: int = 0
    clones_kept: int = 0
    donated_inputs: tuple[int, ...] = ()
    opir_nodes_left: int = 0
    from_cache: bool = False
    mode: str | None = None


class CompileReport:
    """Every graph compiled by one backend, newest last; prints as a table.

    Example::

        compiled = opir.compile(model)
        compiled(x)
        print(compiled.opir_report)         # or opir.compiler.report_of(compiled)
        compiled.opir_report.last.fusions   # {'add_rms_norm': 2}
    """

    def __init__(self) -> None:
        self.graphs: list[GraphReport] = []

    @property
    def last(self) -> GraphReport:
        if not self.graphs:
            raise LookupError(
                "nothing compiled yet: call the compiled model (or its compiled forward) "
                "first. Note that opir.compile(model).generate(...) runs the original, "
                "uncompiled forward: compile the forward instead "
                "(model.forward = opir.compile(model.forward))."
            )
        return self.graphs[-1]

    def providers(self) -> list[tuple[str, str]]:
        """(op, provider) per lowered node of the newest graph."""
        return [(entry.op, entry.provider) for entry in self.last.lowered]

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"opir compile report ({len(self.graphs)} graph(s))")
        for column in ("graph", "node", "module", "op", "provider", "passed over"):
            table.add_column(column)
        for i, graph in enumerate(self.graphs):
            for entry in graph.lowered:
                skipped = "; ".join(f"{p}: {why}" for p, why in entry.rejected) or "-"
                table.add_row(str(i), entry.node, entry.module or "-", entry.op, entry.provider,
                              skipped)  # fmt: skip
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=140, color_system=None)
        console.print(self)
        for i, graph in enumerate(self.graphs):
            cached = " (code from Inductor's cache)" if graph.from_cache else ""
            console.print(
                f"graph {i}{cached}: fusions {graph.fusions or '{}'}, clones removed "
                f"{graph.clones_removed} kept {graph.clones_kept}, donated inputs "
                f"{list(graph.donated_inputs)}"
            )
            for entry in graph.unfused:
                where = f" in {entry.module}" if entry.module else ""
                console.print(f"  unfused {entry.op} '{entry.node}'{where}: {entry.reason}")
            for lowered in graph.lowered:
                if lowered.note:
                    where = f"{lowered.node} ({lowered.op} on {lowered.provider})"
                    console.print(f"  {where}: {lowered.note}")
                if lowered.made_contiguous:
                    console.print(
                        f"  {lowered.node}: {', '.join(lowered.made_contiguous)} made contiguous "
                        "(Inductor bug workaround)"
                    )
        return buffer.getvalue()
