"""FX helpers shared by the passes: which nodes call opir ops, fake values, aliasing.

Aliasing is decided from storages, never from a list of view ops: every node
of a Dynamo or AOT graph carries the fake tensor it produces
(``meta["example_value"]`` / ``meta["val"]``), and a view's fake shares its
base's (fake) storage, whatever op made it (``movedim``, ``unfold``, ``.data``,
``tensor_split``, a custom op returning an alias, ...). Dynamo also gives
graph inputs that alias each other one shared fake storage.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import fx
from torch.utils._pytree import tree_leaves

from opir.core.op import Op
from opir.core.registry import ops as registry

OpTarget = torch._ops.OpOverload
_BUILTIN_NAMESPACES = ("aten", "prims", "_operator")


def op_targets() -> dict[OpTarget, tuple[Op, str]]:
    """Every opir overload object -> (op, overload name), built from the registry."""
    targets: dict[OpTarget, tuple[Op, str]] = {}
    for registered in registry.values():
        op = cast(Op, registered)  # every registered op is an Op (the registry names OpLike)
        targets[op.torch_op] = (op, "default")
        if op.maybe_inplace is not None:
            targets[op.maybe_inplace.torch_op] = (op, "maybe_inplace")
    return targets


def opir_nodes(graph: fx.Graph) -> Iterator[tuple[fx.Node, Op, str]]:
    """(node, op, overload name) for every node calling an opir op, in graph order."""
    targets = op_targets()
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in targets:
            yield node, *targets[node.target]


def nodes_by_target(graph: fx.Graph) -> dict[Any, list[fx.Node]]:
    """call_function nodes grouped by target, in graph order (one walk per graph)."""
    index: dict[Any, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            index.setdefault(node.target, []).append(node)
    return index


def val(node: Any) -> Any:
    """The fake value recorded on a node (or the constant itself)."""
    if isinstance(node, fx.Node):
        return node.meta.get("val", node.meta.get("example_value"))
    return node


def positions(graph: fx.Graph) -> dict[fx.Node, int]:
    return {node: i for i, node in enumerate(graph.nodes)}


def storages(value: Any) -> set[int]:
    """Identities of the storages behind every tensor in ``value`` (a node or a fake)."""
    found = set()
    for leaf in tree_leaves(val(value)):
        if isinstance(leaf, torch.Tensor):
            try:
                found.add(id(leaf.untyped_storage()))
            except (RuntimeError, NotImplementedError):  # sparse / functional wrappers
                continue
    return found


class Aliases:
    """Storage identities of every node of a graph, computed once.

    The one alias walk of the compiler: donation checks and clone elimination
    both ask it who reads a buffer and who made it.
    """

    def __init__(self, graph: fx.Graph) -> None:
        self.graph = graph
        self.of = {node: storages(node) for node in graph.nodes}
        self.order = positions(graph)

    def readers(self, node: fx.Node) -> list[fx.Node]:
        """Nodes with an input sharing a storage with ``node``'s value, in graph order.

        The output node counts: returning an alias of a buffer reads it.
        """
        wanted = self.of.get(node) or storages(node)
        if not wanted:
            return []
        return [
            other
            for other in self.graph.nodes
            if other.op != "placeholder"
            and any((self.of.get(i) or storages(i)) & wanted for i in other.all_input_nodes)
        ]

    def owns_storage(self, node: fx.Node) -> bool:
        """True if ``node``'s value lives in a storage no earlier node produced."""
        mine = self.of.get(node) or storages(node)
        position = self.order[node]
        return bool(mine) and not any(
            self.of[other] & mine for other in self.graph.nodes if self.order[other] < position
        )


def calls_custom_kernel(gm: fx.GraphModule) -> bool:
    """True if a traced impl calls an op outside ATen/prims (a custom kernel)."""
    return any(
        isinstance(node.target, torch._ops.OpOverload)
        and node.target.namespace not in _BUILTIN_NAMESPACES
        for node in gm.graph.nodes
    )


def getitem_users(node: fx.Node) -> dict[int, list[fx.Node]]:
    """For a node returning a tuple: output index -> the getitem nodes reading it."""
    users: dict[int, list[fx.Node]] = {}
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem:
            users.setdefault(typing.cast(int, user.args[1]), []).append(user)
    return users


def module_of(node: fx.Node) -> str:
    """The innermost module a node came from (``nn_module_stack``), or ''."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    cls_name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return f"{_clean_path(path)} ({cls_name})"


def _clean_path(path: str) -> str:
    """Dynamo writes ``L['self'].layers[0].norm``; show ``layers.0.norm``."""
    for prefix in ("L['self'].", "L['self']", "self."):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return path.replace("[", ".").replace("]", "").replace("'", "") or "<root>"
