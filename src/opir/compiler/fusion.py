"""The fusion engine: rules as data, each anchored on the op it rewrites.

A :class:`Rule` names the op (or ``OpOverload``) it anchors on and a
``match`` function. ``match(node, args)`` sees only nodes calling the anchor
(``args`` completed with defaults) and returns a :class:`Fused` (what to put
in the node's place), a reason string (the pattern was recognised but must not
fuse: the report shows it), a :class:`Skip` (the same, reported against
another node, e.g. the norm a fusion would have absorbed), or None (not this
rule's pattern). The first reason recorded for a node wins. The engine
indexes nodes by target once per graph, tries the rules in table order (the
order is the priority: supersets first), inserts the fused call, points the
replaced nodes' later users at its outputs and erases what became dead.

Adding a rule is one entry in ``RULES`` (:mod:`opir.compiler.fusion_rules`).

The fused call records the opir ops it replaced (``node.meta[FUSED_FROM]``), so
lowering can carry a priority pinned on them over to the fused op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from opir.compiler.fx_utils import module_of, nodes_by_target, op_targets, positions, val
from opir.core.op import Op


@dataclasses.dataclass(frozen=True)
class Fused:
    """A match: call ``op``'s default overload with ``args``; output ``i`` replaces
    ``outputs[i]`` (uses after the new call); ``dead`` nodes go if unused.
    ``single``: the op returns one tensor (``outputs == {0: node}``), not a tuple.
    ``out_vals``: the call's fake outputs; None runs the op on the args' fake values.
    ``view`` (tuple outputs): ``(target, extra_args)``: each output goes through
    ``target(output, *extra_args)`` (e.g. a transpose back to the layout the
    replaced nodes had) before it replaces ``outputs[i]``."""

    op: Op
    args: tuple
    outputs: dict[int, fx.Node]
    out_vals: tuple | None
    dead: tuple[fx.Node, ...] = ()
    single: bool = False
    view: tuple[Any, tuple] | None = None


@dataclasses.dataclass(frozen=True)
class Skip:
    """A recognised pattern that must not fuse, reported against ``nodes`` (e.g. the
    norms a fusion would have absorbed) rather than the anchor."""

    nodes: tuple[fx.Node, ...]
    reason: str


Match = Callable[[fx.Node, tuple], "Fused | Skip | str | None"]
FUSED_FROM = "opir_fused_from"  # node meta: names of the opir ops a fused call replaced


@dataclasses.dataclass(frozen=True)
class Rule:
    """One fusion: its name, the op it anchors on, and its match function."""

    name: str
    anchor: Op | torch._ops.OpOverload
    match: Match

    @property
    def target(self) -> Any:
        return self.anchor.torch_op if isinstance(self.anchor, Op) else self.anchor

    def args(self, node: fx.Node) -> tuple:
        if isinstance(self.anchor, Op):
            return self.anchor.complete_args(tuple(node.args), dict(node.kwargs))
        return tuple(node.args)


@dataclasses.dataclass(frozen=True)
class Unfused:
    """A node a rule recognised but did not fuse (a norm, a rotation): why, and the
    module it came from."""

    node: str
    op: str
    reason: str
    module: str = ""


@dataclasses.dataclass
class FusionResult:
    fired: dict[str, int] = dataclasses.field(default_factory=dict)
    unfused: list[Unfused] = dataclasses.field(default_factory=list)


def _not_in(made: tuple[fx.Node, ...], user: fx.Node) -> bool:
    return user not in made


def _fake_call(target: Any, args: tuple) -> Any:
    """``target`` run on the fake values of ``args`` (nodes) in their fake mode."""
    from torch._guards import detect_fake_mode

    fakes = tuple(val(a) if isinstance(a, fx.Node) else a for a in args)
    mode = detect_fake_mode([f for f in fakes if isinstance(f, torch.Tensor)])
    with mode or contextlib.nullcontext():
        return target(*fakes)


def _insert(graph: fx.Graph, anchor: fx.Node, fused: Fused) -> fx.Node | str:
    """Insert the fused call right after its last input; redirect later uses."""
    order = positions(graph)
    inputs = [a for a in fused.args if isinstance(a, fx.Node)]
    last_input = max(inputs, key=order.__getitem__)
    for old in fused.outputs.values():
        early = [u for u in old.users if order[u] <= order[last_input] and u not in fused.dead]
        if early:
            return f"'{old.name}' is used by '{early[0].name}' before the fused op's inputs exist"
    with graph.inserting_after(last_input):
        call = graph.call_function(fused.op.torch_op, fused.args)
    out_vals = fused.out_vals
    if out_vals is None:
        computed = _fake_call(fused.op.torch_op, fused.args)
        out_vals = (computed,) if fused.single else tuple(computed)
    call.meta["val"] = out_vals[0] if fused.single else out_vals
    targets = op_targets()
    replaced = (anchor, *fused.outputs.values(), *fused.dead)
    call.meta[FUSED_FROM] = tuple(
        dict.fromkeys(targets[n.target][0].name for n in replaced if n.target in targets)
    )
    for key in ("nn_module_stack", "stack_trace", "custom"):  # custom: in-graph priorities
        if key in anchor.meta:
            call.meta[key] = anchor.meta[key]
    previous = call
    for index, old in sorted(fused.outputs.items()):
        if fused.single:
            old.replace_all_uses_with(call)
            continue
        with graph.inserting_after(previous):
            item = graph.call_function(operator.getitem, (call, index))
        item.meta.update({k: v for k, v in call.meta.items() if k != "val"})
        item.meta["val"] = out_vals[index]
        new = item
        if fused.view is not None:
            target, extra = fused.view
            with graph.inserting_after(item):
                new = graph.call_function(target, (item, *extra))
            new.meta.update({k: v for k, v in item.meta.items() if k != "val"})
            new.meta["val"] = _fake_call(target, (item, *extra))
        # every user but the new nodes themselves
        old.replace_all_uses_with(new, delete_user_cb=functools.partial(_not_in, (item, new)))
        previous = new
    for node in (*fused.outputs.values(), *fused.dead):
        if not node._erased and not node.users:
            graph.erase_node(node)
    return call


def fuse(graph: fx.Graph, rules: Sequence[Rule]) -> FusionResult:
    """Apply ``rules`` (in priority order, e.g. ``fusion_rules.RULES``) to ``graph`` in place."""
    result = FusionResult()
    index = nodes_by_target(graph)
    reasons: dict[fx.Node, str] = {}
    for rule in rules:
        for node in index.get(rule.target, ()):
            if node._erased:
                continue
            found: Fused | Skip | fx.Node | str | None = rule.match(node, rule.args(node))
            if isinstance(found, Fused):
                found = _insert(graph, node, found)
            if isinstance(found, Skip):
                for skipped in found.nodes:
                    reasons.setdefault(skipped, found.reason)
            elif isinstance(found, str):
                reasons.setdefault(node, found)
            elif found is not None:
                result.fired[rule.name] = result.fired.get(rule.name, 0) + 1
    for node, reason in reasons.items():
        if not node._erased:
            target = getattr(node.target, "_schema", None)
            name = target.name.split("::")[-1] if target is not None else str(node.target)
            result.unfused.append(Unfused(node.name, name, reason, module_of(node)))
    graph.lint()
    return result
