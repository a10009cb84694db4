"""The pass sequence on the ATen graph, and where it runs (DESIGN §5).

::

    fusion -> DCE -> lowering -> clone elimination -> DCE

With Inductor, the sequence is Inductor's ``joint_custom_pre_pass``: it runs on
the functionalized, decomposed graph *as the model wrote it* — before
Inductor's own pattern passes (which would, e.g., fold ``mm + residual`` into
``addmm`` and hide the residual add from the fusion rules) and before
Inductor computes its cache key, which is therefore a key on the lowered
graph (see :mod:`opir.compiler.cache`). Without Inductor (``inductor=False``)
the same sequence runs on AOTAutograd's forward graph, which then runs as is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from opir.compiler.cache import kernel_digest
from opir.compiler.clones import count_clones, eliminate_clones
from opir.compiler.fusion import fuse
from opir.compiler.fx_utils import calls_custom_kernel, opir_nodes
from opir.compiler.lowering import lower
from opir.compiler.options import Options
from opir.compiler.report import GraphReport
from opir.core.op import Op


class OpirPasses(CustomGraphPass):
    """Fusion, lowering and clone elimination on one graph; fills ``report``.

    ``uuid()`` is None until the passes ran (caches keyed before lowering must
    not serve this graph), then the digest of the options and of the custom
    kernels the lowered graph calls.
    """

    def __init__(
        self, options: Options, fixed: Mapping[Op, tuple[str, ...]], report: GraphReport
    ) -> None:
        self.options = options
        self.fixed = fixed
        self.report = report
        self.ran = False
        self._uuid: str | None = None

    def __call__(self, graph: fx.Graph) -> None:
        report = self.report
        if self.options.fuse:
            result = fuse(graph)
            report.fusions, report.unfused = result.fired, result.unfused
            graph.eliminate_dead_code()
        kernels: list[str] = []
        report.lowered = lower(
            graph,
            self.fixed,
            for_inductor=self.options.inductor,
            on_traced=self._note_kernel(kernels),
        )
        report.opir_nodes_left = sum(1 for _ in opir_nodes(graph))
        if self.options.eliminate_clones:
            removed, kept = eliminate_clones(graph, report.donated_inputs)
        else:
            removed, kept = 0, count_clones(graph)
        report.clones_removed, report.clones_kept = removed, kept
        graph.eliminate_dead_code()
        digest = hashlib.sha256(repr(self.options).encode())
        for kernel in sorted(set(kernels)):
            digest.update(kernel.encode())
        self._uuid = digest.hexdigest()
        self.ran = True

    @staticmethod
    def _note_kernel(kernels: list[str]) -> Callable[[Any, fx.GraphModule], None]:
        def note(impl: Any, traced: fx.GraphModule) -> None:
            if calls_custom_kernel(traced):
                kernels.append(kernel_digest(impl))

        return note

    def uuid(self) -> str | None:
        return self._uuid

    def ops(self) -> list[Op]:
        """The ops this graph lowered (what its staleness depends on)."""
        from opir.core.registry import ops

        return [ops[entry.op] for entry in self.report.lowered]


def compile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    passes: OpirPasses,
    config_patches: Mapping[str, Any],
) -> Callable[..., Any]:
    """Compile one Dynamo graph with ``passes`` (through Inductor unless disabled)."""
    if passes.options.inductor:
        from torch._dynamo.utils import counters
        from torch._inductor.compile_fx import compile_fx

        hits = counters["inductor"]["fxgraph_cache_hit"]
        compiled = compile_fx(
            gm,
            list(example_inputs),
            config_patches={**config_patches, "joint_custom_pre_pass": passes},
        )
        passes.report.from_cache = counters["inductor"]["fxgraph_cache_hit"] > hits
        return compiled
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def forward_compiler(fx_gm: fx.GraphModule, _: Any) -> Callable[..., Any]:
        passes(fx_gm.graph)
        fx_gm.recompile()
        return make_boxed_func(fx_gm.forward)

    return aot_module_simplified(gm, list(example_inputs), fw_compiler=forward_compiler)
