"""The pass sequence on the ATen graph, and where it runs (the pipeline: ``backend.py``).

::

    fusion -> DCE -> lowering -> clone elimination -> DCE

Without Inductor (``inductor=False``) the sequence runs on AOTAutograd's
forward graph, which then runs as is. With Inductor it is split in two:

* :class:`FusePass` is Inductor's ``joint_custom_pre_pass``: fusion runs on the
  functionalized, decomposed graph *as the model wrote it*, before Inductor's
  own pattern passes (which fold ``mm + residual`` into ``addmm`` and would hide
  the residual add from the rules). It then *plans* the rest — lowering and
  clone elimination on a copy of the graph — which fills the report and gives
  the digest of the lowered code.
* :class:`LowerPass` is the ``post_grad_custom_post_pass``: lowering and clone
  elimination for real, after every Inductor pass that assumes a functional
  graph (``remove_noop_ops`` drops clones, ``reorder_for_locality`` moves
  reads), since in-place kernels make the graph non-functional. Its ``uuid()``
  is the plan's digest, and Inductor computes its FX-graph cache key after
  the joint passes: the key covers the lowered code (see ``cache.py``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from opir.compiler.cache import kernel_digest
from opir.compiler.clones import count_clones, eliminate_clones
from opir.compiler.fusion import Fused, fuse
from opir.compiler.fusion_rules import rules
from opir.compiler.fx_utils import calls_custom_kernel, opir_nodes, val
from opir.compiler.lowering import lower
from opir.compiler.options import Options
from opir.compiler.report import GraphReport
from opir.core.op import Op

_SOURCES_DIGEST = hashlib.sha256(
    b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()


class OpirPasses:
    """The pass sequence over one graph, its report, and the digest of what it lowered."""

    def __init__(
        self, options: Options, fixed: Mapping[Op, tuple[str, ...]], report: GraphReport
    ) -> None:
        self.options = options
        self.fixed = fixed
        self.report = report
        self.digest: str | None = None  # of the lowered code, once planned or run
        self.ops: tuple[Op, ...] = ()  # the ops lowered (what the graph's staleness depends on)

    def fuse(self, graph: fx.Graph) -> None:
        if self.options.fuse:
            result = fuse(graph, rules(self.quant_gate))
            self.report.fusions, self.report.unfused = result.fired, result.unfused
            graph.eliminate_dead_code()

    def quant_gate(self, fused: Fused) -> str | None:
        """The ``fuse_quant`` policy for one norm/activation -> quant match: None to fuse."""
        x = val(fused.args[0])
        device = x.device.type if hasattr(x, "device") else "cpu"
        policy = self.options.quant_policy(device)
        if policy == "always":
            return None
        if policy == "never":
            return f"fuse_quant='never' ({device}): {fused.op.name} not made"
        op = fused.op
        args = op.complete_args(fused.args, {})
        selection = op.select(tuple(val(a) for a in args), op.compile_priority(self.fixed.get(op)))
        provider = selection.impl.provider
        if provider in ("native", "inductor"):
            return (
                f"fuse_quant='{policy}' ({device}): {op.name} would lower to {provider!r}, not "
                "a hand-written kernel, and Inductor fuses the unfused pair itself"
            )
        return None

    def lower(self, graph: fx.Graph) -> None:
        """Lowering and clone elimination; fills the report and the digest."""
        report = self.report
        kernels: list[str] = []

        def note(impl: Any, traced: fx.GraphModule) -> None:
            if calls_custom_kernel(traced):
                kernels.append(kernel_digest(impl))

        self.ops = tuple(op for _, op, _ in opir_nodes(graph))
        report.lowered = lower(graph, self.fixed, self.options.inductor, note)
        report.opir_nodes_left = sum(1 for _ in opir_nodes(graph))
        if self.options.eliminate_clones:
            removed, kept = eliminate_clones(graph, report.donated_inputs)
        else:
            removed, kept = 0, count_clones(graph)
        report.clones_removed, report.clones_kept = removed, kept
        graph.eliminate_dead_code()
        digest = hashlib.sha256(graph.python_code("self").src.encode())
        for kernel in sorted(set(kernels)):
            digest.update(kernel.encode())
        self.digest = digest.hexdigest()

    def __call__(self, graph: fx.Graph) -> None:
        self.fuse(graph)
        self.lower(graph)


class FusePass(CustomGraphPass):
    """Inductor's joint_custom_pre_pass: fusion, then a planned lowering on a copy."""

    def __init__(self, passes: OpirPasses) -> None:
        self.passes = passes

    def __call__(self, graph: fx.Graph) -> None:
        self.passes.fuse(graph)
        self.passes.lower(copy.deepcopy(graph))

    def uuid(self) -> str:
        return hashlib.sha256(f"{_SOURCES_DIGEST}{self.passes.options!r}".encode()).hexdigest()


class LowerPass(CustomGraphPass):
    """Inductor's post_grad_custom_post_pass: lowering and clone elimination.

    ``uuid()`` is None until the fusion pass planned the lowering (caches keyed
    before that, like AOTAutograd's, must not serve this graph), then the
    digest of the planned lowered code.
    """

    def __init__(self, passes: OpirPasses) -> None:
        self.passes = passes

    def __call__(self, graph: fx.Graph) -> None:
        self.passes.lower(graph)

    def uuid(self) -> str | None:
        return self.passes.digest


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
        patches = {
            **config_patches,
            "joint_custom_pre_pass": FusePass(passes),
            "post_grad_custom_post_pass": LowerPass(passes),
        }
        compiled = compile_fx(gm, list(example_inputs), config_patches=patches)
        passes.report.from_cache = counters["inductor"]["fxgraph_cache_hit"] > hits
        # torch's annotation covers AOT-export results too; a GraphModule compiles to a callable
        return compiled  # type: ignore[return-value]
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def forward_compiler(fx_gm: fx.GraphModule, _: Any) -> Callable[..., Any]:
        passes(fx_gm.graph)
        fx_gm.recompile()
        return make_boxed_func(fx_gm.forward)

    return aot_module_simplified(
        gm,
        list(example_inputs),
        fw_compiler=forward_compiler,  # type: ignore[arg-type]  # a plain function is accepted
    )
