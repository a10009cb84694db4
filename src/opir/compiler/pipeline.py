"""``opir.backend`` and ``opir.compile``: torch.compile with opir's passes.

Pipeline (DESIGN §5)::

    Dynamo graph (opir ops opaque)
      -> pre-grad: maybe_inplace -> default overload, donation checks  (donation.py)
      -> AOTAutograd (functionalization)
      -> post-grad: fusion -> DCE -> lowering -> clone elimination -> DCE
      -> Inductor code generation, or (``inductor=False``) run the graph as is

With Inductor the post-grad passes are installed as
``post_grad_custom_post_pass``; its ``uuid()`` covers opir's pass sources, the
effective priorities and the source of every impl they can select, so
Inductor's on-disk cache never serves a graph lowered under other priorities
or kernels. Within a process, each compiled graph also remembers the priority
state it was lowered for and recompiles when it changes (``set_default``,
``register_impl``, a scoped ``priority``), instead of running stale kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from opir.compiler.clones import count_clones, eliminate_clones
from opir.compiler.donation import DonationInfo, functionalize_donations
from opir.compiler.fusion import fuse
from opir.compiler.graph_utils import opir_nodes
from opir.compiler.lowering import Lowered, lower
from opir.core import scope as _scope
from opir.core.config import resolve_config
from opir.core.platform import cache_root
from opir.core.registry import epoch
from opir.core.registry import ops as registry

_PASS_SOURCES = sorted(Path(__file__).parent.glob("*.py"))


@dataclasses.dataclass
class GraphReport:
    """What the passes did to one compiled graph."""

    fusions: dict[str, int] = dataclasses.field(default_factory=dict)
    lowered: list[Lowered] = dataclasses.field(default_factory=list)
    clones_removed: int = 0
    clones_kept: int = 0
    donated_inputs: list[int] = dataclasses.field(default_factory=list)
    opir_nodes_left: int = 0
    from_cache: bool = False  # Inductor reused a cached graph; this report was saved with it

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: Path) -> GraphReport | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        data["lowered"] = [
            Lowered(**{**e, "rejected": tuple(e["rejected"])}) for e in data["lowered"]
        ]
        return cls(**{**data, "from_cache": True})


class CompileReport:
    """Every graph compiled by one backend, newest last; prints as a table."""

    def __init__(self) -> None:
        self.graphs: list[GraphReport] = []

    @property
    def last(self) -> GraphReport:
        if not self.graphs:
            raise LookupError("nothing compiled yet: call the compiled model first")
        return self.graphs[-1]

    def providers(self) -> list[tuple[str, str]]:
        """(op, provider) per lowered node of the newest graph."""
        return [(entry.op, entry.provider) for entry in self.last.lowered]

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"opir compile report ({len(self.graphs)} graph(s))")
        for column in ("graph", "node", "op", "provider", "skipped before it"):
            table.add_column(column)
        for i, graph in enumerate(self.graphs):
            for entry in graph.lowered:
                table.add_row(
                    str(i), entry.node, entry.op, entry.provider, ", ".join(entry.rejected) or "-"
                )
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=120, color_system=None)
        console.print(self)
        for i, graph in enumerate(self.graphs):
            console.print(
                f"graph {i}: fusions {graph.fusions or '{}'}, clones removed "
                f"{graph.clones_removed} kept {graph.clones_kept}, donated inputs "
                f"{graph.donated_inputs}"
            )
        return buffer.getvalue()


def _impl_sources_digest() -> str:
    """Hash of every impl's module source (and declared kernel files) in reach."""
    digest = hashlib.sha256()
    for name in sorted(registry):
        op = registry[name]
        digest.update(f"{name}:{op.compile_priority().providers}".encode())
        for impl in op.impls.values():
            module = inspect.getmodule(impl.fn)
            try:
                digest.update(inspect.getsource(module or impl.fn).encode())
            except (OSError, TypeError):
                digest.update(repr(impl.fn).encode())
            for extra in getattr(impl.fn, "__opir_sources__", ()):
                digest.update(Path(extra).read_bytes())
    return digest.hexdigest()


def _report_path(
    gm: fx.GraphModule, example_inputs: Sequence[Any], post_grad: PostGradPass
) -> Path:
    """Where the report of this graph, lowered under this pass uuid, is kept."""
    digest = hashlib.sha256(gm.code.encode())
    for value in example_inputs:
        meta = (value.dtype, tuple(value.shape)) if isinstance(value, torch.Tensor) else value
        digest.update(repr(meta).encode())
    digest.update(post_grad.uuid().encode())
    return cache_root() / "compile-reports" / f"{digest.hexdigest()[:32]}.json"


def priority_state() -> tuple:
    """What decides lowering: process-wide epoch and the scoped priorities."""
    scope = _scope.current.get()
    return (epoch(), scope.priority_key if scope is not None else ())


class PostGradPass(CustomGraphPass):
    """Fusion, lowering and clone elimination on the post-grad (ATen) graph.

    Its report joins the backend's only when the pass runs: Dynamo sometimes
    hands a backend a graph it then discards (e.g. when it first tries a float
    attribute as a dynamic input under ``dynamic=True``).
    """

    def __init__(
        self, options: Options, report: GraphReport, reports: CompileReport, saved: Path | None
    ) -> None:
        self.options = options
        self.report = report
        self.reports = reports
        self.saved = saved  # where the report is kept for Inductor cache hits
        self.ran = False

    def __call__(self, graph: fx.Graph) -> None:
        self.ran = True
        self.reports.graphs.append(self.report)
        if self.options.fuse:
            self.report.fusions = fuse(graph).fired
            graph.eliminate_dead_code()
        fixed = {registry[name]: providers for name, providers in self.options.priority}
        self.report.lowered = lower(graph, fixed)
        self.report.opir_nodes_left = sum(1 for _ in opir_nodes(graph))
        if self.options.eliminate_clones:
            removed, kept = eliminate_clones(graph, self.report.donated_inputs)
        else:
            removed, kept = 0, count_clones(graph)
        self.report.clones_removed, self.report.clones_kept = removed, kept
        graph.eliminate_dead_code()
        if self.saved is not None:
            self.report.save(self.saved)

    def uuid(self) -> str:
        digest = hashlib.sha256()
        for path in _PASS_SOURCES:
            digest.update(path.read_bytes())
        digest.update(repr(dataclasses.astuple(self.options)).encode())
        digest.update(repr(priority_state()[1]).encode())
        digest.update(_impl_sources_digest().encode())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Options:
    inductor: bool = True  # False: run the post-grad graph without code generation
    fuse: bool = True
    eliminate_clones: bool = True
    # Lowering priority for this model only, ((op, (providers...)), ...): it
    # replaces the ambient priority of those ops when lowering, so a model can
    # be compiled with fixed kernels whatever priority its callers set.
    priority: tuple[tuple[str, tuple[str, ...]], ...] = ()


class Backend:
    """A ``torch.compile`` backend running opir's passes (see module docstring)."""

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - {f.name for f in dataclasses.fields(Options)}
        if unknown:
            raise TypeError(
                f"unknown opir.backend option(s) {sorted(unknown)}; valid: "
                f"{[f.name for f in dataclasses.fields(Options)]}"
            )
        if "priority" in options:
            fixed = resolve_config(options["priority"], "opir.backend(priority=...)")
            options["priority"] = tuple(sorted((op.name, p) for op, p in fixed.items()))
        self.options = Options(**options)
        self.report = CompileReport()

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        donation = functionalize_donations(gm)
        pristine = fx.GraphModule(gm, copy.deepcopy(gm.graph))
        compiled: dict[tuple, Callable[..., Any]] = {}

        def compile_for(state: tuple) -> Callable[..., Any]:
            graph_module = fx.GraphModule(pristine, copy.deepcopy(pristine.graph))
            fn = self._compile(graph_module, example_inputs, donation)
            compiled[state] = fn
            return fn

        def run(*args: Any) -> Any:
            state = priority_state()
            fn = compiled.get(state) or compile_for(state)
            return fn(*args)

        compile_for(priority_state())
        run._opir_compiled = compiled  # type: ignore[attr-defined]  # for tests
        return run

    def _compile(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], donation: DonationInfo
    ) -> Callable[..., Any]:
        report = GraphReport(donated_inputs=list(donation.donated_inputs))
        if self.options.inductor:
            from torch._inductor.compile_fx import compile_fx

            saved = _report_path(
                gm, example_inputs, PostGradPass(self.options, report, self.report, None)
            )
            post_grad = PostGradPass(self.options, report, self.report, saved)
            compiled = compile_fx(
                gm, list(example_inputs), config_patches={"post_grad_custom_post_pass": post_grad}
            )
            if not post_grad.ran:  # Inductor's cache served the graph: our passes did not run
                self.report.graphs.append(GraphReport.load(saved) or GraphReport(from_cache=True))
            return compiled
        post_grad = PostGradPass(self.options, report, self.report, None)
        from functorch.compile import make_boxed_func
        from torch._functorch.aot_autograd import aot_module_simplified

        def forward_compiler(fx_gm: fx.GraphModule, _: Any) -> Callable[..., Any]:
            post_grad(fx_gm.graph)
            fx_gm.recompile()
            return make_boxed_func(fx_gm.forward)

        return aot_module_simplified(gm, list(example_inputs), fw_compiler=forward_compiler)


def backend(**options: Any) -> Backend:
    """A backend for ``torch.compile(model, backend=opir.backend(...))``.

    Options: ``inductor`` (default True; False runs the passes and executes
    the graph without Inductor code generation — fast to compile, for tests
    and debugging), ``fuse`` and ``eliminate_clones`` (default True), and
    ``priority`` ({op: [providers]}, the lowering priority of this model's
    ops regardless of the priority in effect when it runs).
    """
    return Backend(**options)


def compile(
    model: Any = None, *, options: dict[str, Any] | None = None, **torch_compile_kwargs: Any
):
    """``torch.compile(model, backend=opir.backend(**options), **torch_compile_kwargs)``.

    The result carries ``.opir_report`` (a :class:`CompileReport`): the
    provider chosen per opir node, fusions fired and clones removed.
    """
    compiler = Backend(**(options or {}))
    compiled = torch.compile(model, backend=compiler, **torch_compile_kwargs)
    compiled.opir_report = compiler.report
    return compiled
