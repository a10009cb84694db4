"""Lowering: each opir node becomes the traced graph of the impl chosen for it.

The impl is picked by ``op.select`` on the node's fake arguments with the
*compile* priority (the user's priority, then the platform defaults measured
for compiled graphs), so eager and compiled code agree whenever the user set a
priority; a priority scope written inside the compiled code pins its nodes
(``node_priority``); the reasons the providers before it were passed over are kept for
the report. The impl is traced with ``make_fx`` on those fake values, inside
the graph's fake mode, and its nodes are copied in place of the opir node. An
in-place impl is traced behind clones of the activations (core's
``on_clones``), so the graph stays functional; clone elimination removes the
clones that are not needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

from opir.compiler.clones import CLONE_META
from opir.compiler.fusion import FUSED_FROM
from opir.compiler.fx_utils import calls_custom_kernel, getitem_users, module_of, opir_nodes, val
from opir.compiler.workarounds import contiguous_copy, contiguous_inputs
from opir.core.errors import PriorityError
from opir.core.impl import Impl, on_clones
from opir.core.op import Op
from opir.core.priority import validate_providers
from opir.core.registry import ops as _registered_ops
from opir.core.scope import PRIORITY_ANNOTATION, annotated_priority


@dataclasses.dataclass(frozen=True)
class Lowered:
    """One opir node and the impl it became."""

    node: str
    op: str
    provider: str
    rejected: tuple[tuple[str, str], ...]  # (provider, why) passed over, in priority order
    constants: tuple = ()  # the node's non-tensor arguments (epsilon, weight_bias, ...)
    module: str = ""  # the module it came from (nn_module_stack), if known
    made_contiguous: tuple[str, ...] = ()  # inputs copied to dodge an Inductor bug
    note: str = ""  # how a priority pinned on an op fusion replaced was (or was not) used


def _traceable(op: Op, impl: Impl):
    """A traceable function with the op's functional semantics for ``impl``."""
    return on_clones(impl.fn, op.activation_positions) if impl.inplace else impl.fn


def _trace(op: Op, impl: Impl, args: tuple) -> tuple[fx.GraphModule, list[int]]:
    """Trace ``impl`` with the fake values of the node's Node arguments."""
    node_positions = [i for i, a in enumerate(args) if isinstance(a, fx.Node)]
    fn = _traceable(op, impl)

    def with_constants(*traced: Any) -> Any:
        full = list(args)
        for i, value in zip(node_positions, traced, strict=True):
            full[i] = value
        return fn(*full)

    fakes = [val(args[i]) for i in node_positions]
    fake_mode = detect_fake_mode(fakes)
    # ATen graphs hold decomposed ops: trace with the table Inductor uses, or
    # Inductor finds ops it expects to have been decomposed.
    with fake_mode or contextlib.nullcontext(), enable_python_dispatcher():
        gm = make_fx(with_constants, select_decomp_table(), tracing_mode="real")(*fakes)
    return gm, node_positions


def _splice(graph: fx.Graph, node: fx.Node, gm: fx.GraphModule, inputs: list[fx.Node]) -> None:
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, inputs, strict=True))
    result: Any = None
    with graph.inserting_before(node):
        for inner in gm.graph.nodes:
            if inner.op == "placeholder":
                continue
            if inner.op == "output":
                result = fx.map_arg(inner.args[0], lambda n: env[n])
                break
            copied = graph.node_copy(inner, lambda n: env[n])
            for key in ("nn_module_stack", "stack_trace"):
                if key in node.meta:
                    copied.meta[key] = node.meta[key]
            if inner.op == "call_function" and inner.target is torch.ops.aten.clone.default:
                copied.meta[CLONE_META] = True
            env[inner] = copied
    if isinstance(result, (tuple, list)):
        for index, users in getitem_users(node).items():
            for user in users:
                user.replace_all_uses_with(result[index])
                graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)


def _contiguous(graph: fx.Graph, node: fx.Node, op: Op, args: tuple) -> tuple[tuple, tuple]:
    """Copy the inputs a known Inductor bug miscompiles to contiguous ones."""
    names = contiguous_inputs(op, tuple(val(a) for a in args))
    if not names:
        return args, ()
    copied = list(args)
    with graph.inserting_before(node):
        for name in names:
            i = list(op.signature.parameters).index(name)
            copy = graph.call_function(contiguous_copy._opoverload, (copied[i],))
            copy.meta["val"] = val(copied[i]).clone(memory_format=torch.contiguous_format)
            copied[i] = copy
    return tuple(copied), names


def _check_in_graph_priorities(graph: fx.Graph) -> None:
    """Validate the priorities pinned inside the compiled code (``op.set_priority`` /
    ``opir.priority`` blocks traced by Dynamo), which nothing checked at trace time."""
    seen: set[tuple[str, Any]] = set()
    for node in graph.nodes:
        custom = node.meta.get("custom")
        if not isinstance(custom, Mapping):
            continue
        for key, providers in custom.items():
            if not isinstance(key, str) or not key.startswith(PRIORITY_ANNOTATION):
                continue
            name = key.removeprefix(PRIORITY_ANNOTATION)
            if (name, providers) in seen:
                continue
            seen.add((name, providers))
            where = f"priority scope inside compiled code (node {node.name})"
            op = _registered_ops.get(name)
            if op is None:
                raise PriorityError(
                    f"{where}: unknown op '{name}'; registered ops are {sorted(_registered_ops)}"
                )
            try:
                validate_providers(op, list(providers))
            except PriorityError as e:
                raise PriorityError(f"{where}: {e}") from None


def node_priority(
    node: fx.Node, op: Op, fixed: Mapping[Op, tuple[str, ...]]
) -> tuple[tuple[str, ...] | None, str]:
    """The user priority that decides ``node``, and a note for the report.

    An in-graph scope around the call (innermost, as eagerly) comes first, then
    the compile options' ``priority`` for the op; None means the priority in
    effect when the graph is lowered. A node fusion created (a
    ``fused_add_rms_norm`` that was an ``rms_norm``) with no pin of its own
    takes the pin of an op it replaced, keeping the providers the fused op
    has: pinning ``rms_norm`` to ``cpu`` pins the fused norm to ``cpu`` too.
    When the fused op has none of them, the note says so.
    """
    pinned = annotated_priority(node.meta, op.name)
    if pinned is not None:
        return tuple(pinned), ""
    if op in fixed:
        return fixed[op], ""
    note = ""
    for source in node.meta.get(FUSED_FROM, ()):
        source_op = cast("Op | None", _registered_ops.get(source))  # registered ops are Ops
        pin = annotated_priority(node.meta, source)
        if pin is None and source_op is not None:
            pin = fixed.get(source_op)
        if not pin or source == op.name:
            continue
        carried = tuple(p for p in pin if p in op.impls)
        if carried:
            return carried, (
                f"priority {list(carried)} carried over from {source}'s pin {list(pin)} "
                f"(fused into {op.name})"
            )
        note = note or (
            f"{source}'s pin {list(pin)} not carried over: {op.name} (what fusion made of "
            f"it) has none of those providers (it has {sorted(op.impls)})"
        )
    return None, note


def lower(
    graph: fx.Graph,
    fixed: Mapping[Op, tuple[str, ...]] | None = None,
    for_inductor: bool = True,
    on_traced: Callable[[Impl, fx.GraphModule], None] | None = None,
) -> list[Lowered]:
    """Replace every opir node by its chosen impl; return what was chosen.

    ``fixed`` gives some ops a priority that replaces the one in effect;
    ``for_inductor`` applies the workarounds for Inductor bugs
    (:mod:`opir.compiler.workarounds`); ``on_traced(impl, traced)`` sees each
    traced impl (the cache key notes the custom kernels they call). Warns
    (RuntimeWarning) naming any opir node that is still in the graph.
    """
    fixed = fixed or {}
    _check_in_graph_priorities(graph)
    chosen: list[Lowered] = []
    for node, op, overload in opir_nodes(graph):
        if overload != "default":
            continue  # maybe_inplace nodes are rewritten by the pre-grad pass
        args = op.complete_args(tuple(node.args), dict(node.kwargs))
        user, note = node_priority(node, op, fixed)
        priority = op.compile_priority(user)
        selection = op.select(tuple(val(a) for a in args), priority)
        gm, node_positions = _trace(op, selection.impl, args)
        made_contiguous: tuple[str, ...] = ()
        if for_inductor and not calls_custom_kernel(gm):  # Inductor generates this code
            args, made_contiguous = _contiguous(graph, node, op, args)
            if made_contiguous:
                selection = op.select(tuple(val(a) for a in args), priority)
                gm, node_positions = _trace(op, selection.impl, args)
        if on_traced is not None:
            on_traced(selection.impl, gm)
        lowered = Lowered(
            node.name,
            op.name,
            selection.impl.provider,
            selection.rejected,
            tuple(a for a in args if not isinstance(a, fx.Node)),
            module_of(node),
            made_contiguous,
            note,
        )
        _splice(graph, node, gm, [args[i] for i in node_positions])
        chosen.append(lowered)
    left = [f"{n.name} ({op.name}.{o})" for n, op, o in opir_nodes(graph)]
    if left:
        warnings.warn(
            f"opir lowering left {len(left)} opir node(s) in the graph: {left}. They will run "
            "through the torch dispatcher (slow path) instead of a chosen kernel.",
            RuntimeWarning,
            stacklevel=2,
        )
    graph.lint()
    return chosen
