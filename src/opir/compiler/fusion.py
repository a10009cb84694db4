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

All-reduce rules (tensor parallelism): ``all_reduce -> rms_norm``,
``all_reduce -> add -> rms_norm`` and ``all_reduce -> fused_add_rms_norm``
become ``all_reduce_rms_norm``. The Gemma form, a weight computed as
``w.float() + 1.0``, becomes the raw ``w`` with ``weight_bias=1.0``. Any other
weight must have x's dtype (the dtype guard: fused all-reduce kernels take a
weight of the activation dtype), otherwise the rule does not fire.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import torch
from torch import fx

from opir.compiler.graph_utils import opir_op, val
from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm

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


def _anchor_args(node: fx.Node, op) -> tuple | None:
    """The node's arguments (variance_size filled) if it calls ``op``'s default overload."""
    if opir_op(node) != (op, "default"):
        return None
    return op.complete_args(tuple(node.args), dict(node.kwargs))


def _finish(graph: fx.Graph, replaced: dict[fx.Node, fx.Node], erase: list[fx.Node]) -> bool:
    """Point every use of each old node at its new node, then erase the dead ones."""
    for old, new in replaced.items():
        old.replace_all_uses_with(new)
    for node in erase:
        if not node.users:
            graph.erase_node(node)
    return True


def add_rms_norm(graph: fx.Graph, node: fx.Node) -> bool:
    args = _anchor_args(node, rms_norm)
    operands = None if args is None else _plain_residual_add(args[0])
    if operands is None:
        return False
    h, weight, epsilon, variance_size, weight_bias = args
    x, residual = operands
    with graph.inserting_before(node):
        fused = graph.call_function(
            fused_add_rms_norm.torch_op,
            (x, residual, weight, epsilon, variance_size, weight_bias),
        )
        out = graph.call_function(operator.getitem, (fused, 0))
        residual_out = graph.call_function(operator.getitem, (fused, 1))
    fused.meta["val"] = (val(node), val(h))
    out.meta["val"], residual_out.meta["val"] = val(node), val(h)
    return _finish(graph, {node: out, h: residual_out}, [node, h])


_ALL_REDUCE = torch.ops.opir_dist.all_reduce.default
_TO_FP32 = (torch.ops.prims.convert_element_type.default, aten._to_copy.default)


def _all_reduce_input(node: object, single_use: bool) -> fx.Node | None:
    """x if node is ``all_reduce(x)`` (used only by the norm when single_use)."""
    if not isinstance(node, fx.Node) or node.target is not _ALL_REDUCE:
        return None
    if single_use and len(node.users) != 1:
        return None
    return node.args[0]


def _weight_and_bias(
    weight: object, x_dtype: torch.dtype, weight_bias: float = 0.0
) -> tuple[object, float] | None:
    """(raw weight, weight_bias) for the fused op, or None if the guard blocks it."""
    if weight is None:
        return None, 0.0
    if weight_bias != 0.0:  # the norm already takes the raw weight plus a bias (GemmaRMSNorm)
        return (weight, weight_bias) if val(weight).dtype == x_dtype else None
    if (
        isinstance(weight, fx.Node)
        and weight.target is aten.add.Tensor
        and len(weight.args) == 2
        and weight.args[1] == 1
        and weight.kwargs.get("alpha", 1) == 1
        and isinstance(weight.args[0], fx.Node)
        and weight.args[0].target in _TO_FP32
        and val(weight.args[0]).dtype == torch.float32
    ):
        raw = weight.args[0].args[0]
        if val(raw).dtype == x_dtype:
            return raw, 1.0  # Gemma: (w.float() + 1.0)
    if val(weight).dtype != x_dtype:
        return None  # dtype guard
    return weight, 0.0


def _replace_with_all_reduce_norm(
    graph: fx.Graph, anchor: fx.Node, x: fx.Node, residual, weight, epsilon, variance_size, bias
) -> tuple[fx.Node, fx.Node] | None:
    resolved = _weight_and_bias(weight, val(x).dtype, bias)
    if resolved is None:
        return None
    raw_weight, bias = resolved
    with graph.inserting_before(anchor):
        fused = graph.call_function(
            all_reduce_rms_norm.torch_op, (x, residual, raw_weight, epsilon, bias, variance_size)
        )
        out = graph.call_function(operator.getitem, (fused, 0))
        residual_out = graph.call_function(operator.getitem, (fused, 1))
    out.meta["val"] = val(anchor) if not isinstance(val(anchor), tuple) else val(anchor)[0]
    residual_out.meta["val"] = val(x)
    fused.meta["val"] = (out.meta["val"], residual_out.meta["val"])
    return out, residual_out


def all_reduce_add_rms_norm(graph: fx.Graph, node: fx.Node) -> bool:
    """``rms_norm(all_reduce(x) + residual)`` (a superset of add_rms_norm)."""
    args = _anchor_args(node, rms_norm)
    operands = None if args is None else _plain_residual_add(args[0])
    x = None if operands is None else _all_reduce_input(operands[0], single_use=True)
    if x is None:
        return False
    h, weight, epsilon, variance_size, bias = args
    made = _replace_with_all_reduce_norm(
        graph, node, x, operands[1], weight, epsilon, variance_size, bias
    )
    if made is None:
        return False
    return _finish(graph, {node: made[0], h: made[1]}, [node, h, operands[0]])


def all_reduce_fused_add_rms_norm(graph: fx.Graph, node: fx.Node) -> bool:
    """``fused_add_rms_norm(all_reduce(x), residual)``."""
    args = _anchor_args(node, fused_add_rms_norm)
    x = None if args is None else _all_reduce_input(args[0], single_use=True)
    if x is None:
        return False
    reduced, residual, weight, epsilon, variance_size, bias = args
    made = _replace_with_all_reduce_norm(
        graph, node, x, residual, weight, epsilon, variance_size, bias
    )
    if made is None:
        return False
    getitems = {user: made[user.args[1]] for user in node.users}
    return _finish(graph, getitems, [*getitems, node, reduced])


def all_reduce_rms_norm_rule(graph: fx.Graph, node: fx.Node) -> bool:
    """``rms_norm(all_reduce(x))``; other uses of the sum read residual_out."""
    args = _anchor_args(node, rms_norm)
    x = None if args is None else _all_reduce_input(args[0], single_use=False)
    if x is None:
        return False
    reduced, weight, epsilon, variance_size, bias = args
    made = _replace_with_all_reduce_norm(
        graph, node, x, None, weight, epsilon, variance_size, bias
    )
    if made is None:
        return False
    return _finish(graph, {node: made[0], reduced: made[1]}, [node, reduced])


# The order is the priority: a rule whose pattern contains another rule's pattern
# (a superset) comes first, so the smaller fusion cannot pre-empt the larger one.
RULES: list[tuple[str, Rule]] = [
    ("all_reduce_add_rms_norm", all_reduce_add_rms_norm),
    ("all_reduce_fused_add_rms_norm", all_reduce_fused_add_rms_norm),
    ("add_rms_norm", add_rms_norm),
    ("all_reduce_rms_norm", all_reduce_rms_norm_rule),
]


def fuse(graph: fx.Graph, rules: list[tuple[str, Rule]] | None = None) -> FusionStats:
    stats = FusionStats()
    for name, rule in rules or RULES:
        for node in list(graph.nodes):
            if not node._erased and rule(graph, node):
                stats.count(name)
    return stats
