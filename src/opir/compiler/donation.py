"""Pre-grad pass: ``maybe_inplace`` nodes become the functional default overload.

In the captured (Dynamo) graph the donating overload is replaced by the
default one, so AOTAutograd sees a functional graph and the lowering pass
decides later whether an in-place kernel may write into the buffers. Before
that, every donation is checked: reading a donated tensor (or a view made
from it in the graph) after the call is a compile error, because in eager
mode it would read whatever the kernel left there. Donated graph inputs are
recorded so that clone elimination may reuse their buffers.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import fx

from opir.compiler.graph_utils import opir_nodes, positions
from opir.core.errors import OpirError

# Methods and functions Dynamo records that return views of their input.
_VIEW_NAMES = {
    "view", "reshape", "view_as", "reshape_as", "transpose", "permute", "t", "T",
    "unsqueeze", "squeeze", "flatten", "unflatten", "expand", "narrow", "select",
    "as_strided", "chunk", "split", "unbind", "__getitem__", "getitem", "detach",
    "contiguous",
}  # fmt: skip


class DonationError(OpirError, RuntimeError):
    """A donated tensor is used after the op it was donated to."""


@dataclasses.dataclass
class DonationInfo:
    donated_inputs: list[int] = dataclasses.field(default_factory=list)  # placeholder indices
    rewritten: int = 0  # maybe_inplace nodes turned into the default overload


def _view_name(node: fx.Node) -> str | None:
    target = node.target
    if node.op == "call_method":
        return str(target)
    name = getattr(target, "__name__", None)
    if isinstance(target, torch._ops.OpOverload):
        return target._opname if target.is_view else None
    return name


def _user_name(node: fx.Node) -> str:
    """Dynamo names an input ``x`` as ``l_x_``; show the user's name."""
    match = re.fullmatch(r"l_(.+)_", node.name)
    return match.group(1) if match and node.op == "placeholder" else node.name


def _aliases(node: fx.Node) -> list[fx.Node]:
    """``node`` and the nodes in the graph that are views made from it."""
    found, stack = [node], [node]
    while stack:
        for user in stack.pop().users:
            if _view_name(user) in _VIEW_NAMES and user.args and user.args[0] in found:
                found.append(user)
                stack.append(user)
    return found


def functionalize_donations(gm: fx.GraphModule) -> DonationInfo:
    """Rewrite ``maybe_inplace`` nodes in place; raise DonationError on misuse."""
    info = DonationInfo()
    graph = gm.graph
    order = positions(graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, op, overload in opir_nodes(graph):
        if overload != "maybe_inplace":
            continue
        for position in op.activation_positions:
            donated = node.args[position] if position < len(node.args) else None
            if not isinstance(donated, fx.Node):
                continue
            for alias in _aliases(donated):
                late = [u for u in alias.users if u is not node and order[u] > order[node]]
                if late:
                    what = "it" if alias is donated else f"its view '{alias.name}'"
                    argument = op.activations[op.activation_positions.index(position)]
                    raise DonationError(
                        f"'{_user_name(donated)}' is donated to {op.name}.maybe_inplace (node "
                        f"'{node.name}', argument '{argument}') "
                        f"but {what} is used afterwards by '{late[0].name}' "
                        f"({late[0].format_node()}). A donated tensor may be overwritten. "
                        f"Clone it before the call, or call the functional {op.name}(...) instead."
                    )
            if donated.op == "placeholder":
                info.donated_inputs.append(placeholders.index(donated))
        node.target = op.torch_op
        info.rewritten += 1
    graph.lint()
    gm.recompile()
    return info
