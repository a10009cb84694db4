"""``opir.backend`` and ``opir.compile``: torch.compile with opir's passes.

Pipeline::

    Dynamo graph (opir ops opaque)
      -> maybe_inplace -> default overload, donation checks   (donation.py)
      -> AOTAutograd (functionalization, decomposition)
      -> fusion -> lowering -> clone elimination               (passes.py)
      -> Inductor code generation, or (``inductor=False``) run the graph as is

Each compiled graph keeps a few variants, one per lowering state of the ops
it lowered, so changing the priority of one of them recompiles it while an
unrelated change does not (cache.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from opir.compiler.cache import Variants
from opir.compiler.donation import DonationError, functionalize_donations
from opir.compiler.options import Options
from opir.compiler.passes import OpirPasses, compile_graph
from opir.compiler.report import CompileReport, GraphReport


def _raising(error: DonationError) -> Callable[..., Any]:
    """A compiled graph that raises ``error`` when run.

    A backend's exceptions reach the user wrapped in Dynamo's
    ``BackendCompilerFailed``; an error raised by the compiled code reaches
    them as itself. The donation check runs at compile time, and the first
    call runs the graph immediately, so the user sees the DonationError.
    """

    def fail(*args: Any) -> Any:
        raise error

    return fail


class Backend:
    """A ``torch.compile`` backend running opir's passes (see :func:`backend`).

    ``report`` (a :class:`CompileReport`) collects every graph it compiled. A
    deep copy (as Hugging Face's ``CompileConfig`` makes) is the same backend,
    so the report stays reachable from the object the user created.
    """

    def __init__(self, **options: Any) -> None:
        self.options = Options.parse(options)
        self.report = CompileReport()
        self.variants: list[Variants] = []  # per compiled graph (for inspection and tests)

    def __deepcopy__(self, memo: dict) -> Backend:
        return self

    def __call__(
        self,
        gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        mode: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Callable[..., Any]:
        opts = self.options.with_torch_compile_args(mode, options)
        try:
            donation = functionalize_donations(gm)
        except DonationError as error:
            return _raising(error)
        pristine = fx.GraphModule(gm, copy.deepcopy(gm.graph))
        fixed = opts.fixed()

        def compile_once():
            report = GraphReport(donated_inputs=donation.donated_inputs, mode=opts.mode)
            passes = OpirPasses(opts, fixed, report)
            graph_module = fx.GraphModule(pristine, copy.deepcopy(pristine.graph))
            fn = compile_graph(graph_module, example_inputs, passes, opts.config_patches())
            self.report.graphs.append(report)
            return fn, passes.ops

        variants = Variants(compile_once, fixed)
        variants.current()
        self.variants.append(variants)

        def run(*args: Any) -> Any:
            return variants.current()(*args)

        return run


def backend(**options: Any) -> Backend:
    """A backend for ``torch.compile(model, backend=opir.backend(...))``.

    Options: ``inductor`` (default True; False runs the passes and executes
    the graph without Inductor code generation — fast to compile, for tests
    and debugging), ``fuse`` and ``eliminate_clones`` (default True),
    ``priority`` ({op: [providers]}, the lowering priority of this model's
    ops regardless of the priority in effect when it runs), ``mode`` and
    ``inductor_options`` (as ``torch.compile``'s ``mode``/``options``, which
    are honoured too when torch passes them to the backend).

    Example::

        b = opir.backend(priority={"rms_norm": ["cpu"]})
        compiled = torch.compile(model, backend=b)
        compiled(x); print(b.report)
    """
    return Backend(**options)


def compile(
    model: Any = None, *, options: dict[str, Any] | None = None, **torch_compile_kwargs: Any
) -> Any:
    """``torch.compile(model, backend=opir.backend(**options), **torch_compile_kwargs)``.

    The result carries its own ``.opir_report`` (a :class:`CompileReport`):
    the provider chosen per opir node, fusions fired, norms left unfused and
    why, clones removed. To compile generation (Hugging Face ``generate``),
    compile the forward: ``model.forward = opir.compile(model.forward)``.

    Example::

        compiled = opir.compile(model, dynamic=True)
        compiled(x)
        print(compiled.opir_report)
    """
    if model is None:
        return lambda m: compile(m, options=options, **torch_compile_kwargs)
    compiler = Backend(**(options or {}))
    compiled = torch.compile(model, backend=compiler, **torch_compile_kwargs)
    # object.__setattr__: torch's module wrapper would forward the attribute to
    # the original module, and two compiled wrappers would share one report.
    object.__setattr__(compiled, "opir_report", compiler.report)
    return compiled


def report_of(compiled: Any) -> CompileReport:
    """The compile report of a compiled object, a module whose forward was
    compiled, or a backend.

    Example: after ``model.forward = opir.compile(model.forward)`` and a call,
    ``opir.compiler.report_of(model)``.
    """
    if isinstance(compiled, Backend):
        return compiled.report
    for candidate in (compiled, getattr(compiled, "forward", None)):
        report = getattr(candidate, "opir_report", None)
        if isinstance(report, CompileReport):
            return report
    raise LookupError(
        f"{type(compiled).__name__} has no opir compile report: pass the object "
        "opir.compile returned, a module whose forward it compiled, or the opir.backend()"
    )
