"""Small helpers shared by the compile passes."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx

from opir.core.op import Op
from opir.core.registry import NAMESPACE
from opir.core.registry import ops as registry


def opir_op(node: fx.Node) -> tuple[Op, str] | None:
    """(op, overload name) if ``node`` calls an opir op, else None."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    if target.namespace != NAMESPACE:
        return None
    op = registry.get(target._schema.name.split("::")[1])
    return None if op is None else (op, target._overloadname)


def opir_nodes(graph: fx.Graph) -> Iterator[tuple[fx.Node, Op, str]]:
    for node in list(graph.nodes):
        found = opir_op(node)
        if found is not None:
            yield node, *found


def val(node: Any) -> Any:
    """The fake value recorded on a node (or the constant itself)."""
    if isinstance(node, fx.Node):
        return node.meta.get("val", node.meta.get("example_value"))
    return node


def positions(graph: fx.Graph) -> dict[fx.Node, int]:
    return {node: i for i, node in enumerate(graph.nodes)}


def is_view(node: fx.Node) -> bool:
    """True if ``node`` returns a view of one of its inputs (aten view ops)."""
    target = node.target
    if node.op != "call_function":
        return False
    if target is operator.getitem:
        return False
    return isinstance(target, torch._ops.OpOverload) and target.is_view


def getitem_users(node: fx.Node) -> dict[int, list[fx.Node]]:
    """For a node returning a tuple: output index -> the getitem nodes reading it."""
    users: dict[int, list[fx.Node]] = {}
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem:
            users.setdefault(user.args[1], []).append(user)
    return users
