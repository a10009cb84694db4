"""Fusion passes on opir ops (post-grad, before lowering).

Rules are plain functions tried on every node in graph order; the list order
is the priority, so a rule matching a larger pattern (a superset) is listed
before any rule matching part of it. Rules anchor on opir nodes, which are
single nodes in the graph, so a short local check replaces Inductor's
pattern matcher and its pitfalls with scalar literals: epsilon is read from
the matched node and carried over, whatever its value.

``add_rms_norm``: ``h = x + residual; y = rms_norm(h, w, eps)`` becomes
``y, h' = fused_add_rms_norm(x, residual, w, eps)`` with every other use of
``h`` reading ``h'``. In fp32 both are identical. In bf16/fp16 ``h'`` is
bit-identical to ``h`` (an aten add of reduced-precision tensors also adds in
fp32 and rounds once), and ``y`` differs only because the fused op
normalises the unrounded fp32 sum: within the op's tolerance. The rule does
not fire unless ``x``, ``residual`` and ``h`` have one dtype and one shape
(no type promotion, no broadcast) and the add is a plain ``x + residual``
(``aten.add.Tensor`` with alpha 1).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import torch
from torch import fx

from opir.compiler.graph_utils import opir_op, val
from opir.ops import fused_add_rms_norm, rms_norm

aten = torch.ops.aten


@dataclasses.dataclass
class FusionStats:
    fired: dict[str, int] = dataclasses.field(default_factory=dict)

    def count(self, rule: str) -> None:
        self.fired[rule] = self.fired.get(rule, 0) + 1


Rule = Callable[[fx.Graph, fx.Node], bool]


def _plain_residual_add(node: object) -> tuple[fx.Node, fx.Node] | None:
    """(x, residual) if node is ``x + residual`` of equal dtype/shape tensors."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target is not aten.add.Tensor or node.kwargs.get("alpha", 1) != 1:
        return None
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    x, residual = node.args
    vx, vr, vh = val(x), val(residual), val(node)
    if not all(isinstance(v, torch.Tensor) for v in (vx, vr, vh)):
        return None
    if not vh.dtype.is_floating_point or not (vx.dtype == vr.dtype == vh.dtype):
        return None
    if not (vx.shape == vr.shape == vh.shape):
        return None
    return x, residual


def add_rms_norm(graph: fx.Graph, node: fx.Node) -> bool:
    found = opir_op(node)
    if found is None or found[0] is not rms_norm or found[1] != "default":
        return False
    h, weight, epsilon, *rest = node.args
    operands = _plain_residual_add(h)
    if operands is None:
        return False
    x, residual = operands
    variance_size = rest[0] if rest else None
    with graph.inserting_before(node):
        fused = graph.call_function(
            fused_add_rms_norm.torch_op, (x, residual, weight, epsilon, variance_size)
        )
        out = graph.call_function(operator.getitem, (fused, 0))
        residual_out = graph.call_function(operator.getitem, (fused, 1))
    fused.meta["val"] = (val(node), val(h))
    out.meta["val"], residual_out.meta["val"] = val(node), val(h)
    node.replace_all_uses_with(out)
    h.replace_all_uses_with(residual_out, delete_user_cb=lambda user: user is not fused)
    graph.erase_node(node)
    if not h.users:
        graph.erase_node(h)
    return True


# Supersets first (later issues add e.g. all_reduce + add + rms_norm above this).
RULES: list[tuple[str, Rule]] = [("add_rms_norm", add_rms_norm)]


def fuse(graph: fx.Graph, rules: list[tuple[str, Rule]] | None = None) -> FusionStats:
    stats = FusionStats()
    for name, rule in rules or RULES:
        for node in list(graph.nodes):
            if not node._erased and rule(graph, node):
                stats.count(name)
    return stats
