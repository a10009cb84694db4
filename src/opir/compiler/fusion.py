"""The fusion engine: rules as data, each anchored on the op it rewrites.

A :class:`Rule` names the op (or ``OpOverload``) it anchors on and a
``match`` function. ``match(node, args)`` sees only nodes calling the anchor
(``args`` completed with defaults) and returns a :class:`Fused` (what to put
in the node's place), a reason string (the pattern was recognised but must not
fuse: the report shows it), or None (not this rule's pattern). The engine
indexes nodes by target once per graph, tries the rules in table order (the
order is the priority: supersets first), inserts the fused call, points the
replaced nodes' later users at its outputs and erases what became dead.

Adding a rule is one entry in ``RULES`` (:mod:`opir.compiler.fusion_rules`).

The fused call records the opir ops it replaced (``node.meta[FUSED_FROM]``), so
lowering can carry a priority pinned on them over to the fused op.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from opir.compiler.fx_utils import module_of, nodes_by_target, op_targets, positions
from opir.core.op import Op


@dataclasses.dataclass(frozen=True)
class Fused:
    """A match: call ``op``'s default overload with ``args``; output ``i`` replaces
    ``outputs[i]`` (uses after the new call); ``dead`` nodes go if unused.
    ``single``: the op returns one tensor (``outputs == {0: node}``), not a tuple."""

    op: Op
    args: tuple
    outputs: dict[int, fx.Node]
    out_vals: tuple
    dead: tuple[fx.Node, ...] = ()
    single: bool = False


Match = Callable[[fx.Node, tuple], "Fused | str | None"]
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
    """A norm no rule fused: why, and the module it came from."""

    node: str
    op: str
    reason: str
    module: str = ""


@dataclasses.dataclass
class FusionResult:
    fired: dict[str, int] = dataclasses.field(default_factory=dict)
    unfused: list[Unfused] = dataclasses.field(default_factory=list)


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
    call.meta["val"] = fused.out_vals[0] if fused.single else fused.out_vals
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
        item.meta["val"] = fused.out_vals[index]
        # every user but the new getitem itself
        old.replace_all_uses_with(item, delete_user_cb=functools.partial(operator.is_not, item))
        previous = item
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
            found: Fused | fx.Node | str | None = rule.match(node, rule.args(node))
            if isinstance(found, Fused):
                found = _insert(graph, node, found)
            if isinstance(found, str):
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
