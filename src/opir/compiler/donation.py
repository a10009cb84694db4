"""Pre-grad pass: ``maybe_inplace`` nodes become the functional default overload.

In the captured (Dynamo) graph the donating overload is replaced by the
default one, so AOTAutograd sees a functional graph and lowering decides later
whether an in-place kernel may write into the buffers. Before that, every
donation is checked: reading a donated tensor after the call — directly,
through any view or alias of its storage made before or after, or by
returning it — is a :class:`DonationError`, because in eager mode it would
read whatever the kernel left there. Aliasing comes from the fake tensors'
storages (see :class:`~opir.compiler.fx_utils.Aliases`), not from a list of
view ops. Donated graph inputs are recorded: clone elimination may then reuse
their buffers, and since that changes the lowered graph, it changes the
compile cache key too (the key is the lowered graph).
"""

from __future__ import annotations

import dataclasses
import re

from torch import fx

from opir.compiler.fx_utils import Aliases, opir_nodes
from opir.core.errors import OpirError


class DonationError(OpirError, RuntimeError):
    """A donated tensor is used after the op it was donated to."""


@dataclasses.dataclass(frozen=True)
class DonationInfo:
    """What the pre-grad pass found: the graph inputs (placeholder indices) the
    user donated."""

    donated_inputs: tuple[int, ...] = ()


def _user_name(node: fx.Node) -> str:
    """Dynamo names an input ``x`` as ``l_x_``; show the user's name."""
    match = re.fullmatch(r"l_(.+)_", node.name)
    return match.group(1) if match and node.op == "placeholder" else node.name


def _describe(reader: fx.Node) -> str:
    if reader.op == "output":
        return "the graph's output (it is returned)"
    return f"'{reader.name}' ({reader.format_node()})"


def _returned_by_frame(graph: fx.Graph) -> list[fx.Node]:
    """Graph values the user's function returns without the graph's output seeing them.

    Dynamo returns a graph input the function returns unchanged straight from
    the frame, not through the graph, so the output node cannot show it. When
    the graph ends at the function's return, the values being returned are on
    the translator's stack; read them there (best effort: a torch-internal
    structure, so any surprise means "none found").
    """
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator
        from torch._dynamo.variables import TensorVariable

        tx = InstructionTranslator.current_tx()
        if tx is None or tx.current_instruction.opname not in ("RETURN_VALUE", "RETURN_CONST"):
            return []
        found, stack = [], list(tx.stack)
        while stack:
            value = stack.pop()
            if isinstance(value, TensorVariable):
                node = value.as_proxy().node
                if node.graph is graph:
                    found.append(node)
                continue
            items = getattr(value, "items", None)
            if isinstance(items, dict):
                stack.extend(items.values())
            elif isinstance(items, (list, tuple)):
                stack.extend(items)
        return found
    except Exception:  # an internal structure changed: no extra information
        return []


def functionalize_donations(gm: fx.GraphModule) -> DonationInfo:
    """Rewrite ``maybe_inplace`` nodes in place; raise DonationError on misuse."""
    graph = gm.graph
    aliases = Aliases(graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    donated_inputs: list[int] = []
    returned = _returned_by_frame(graph)
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    for node, op, overload in opir_nodes(graph):
        if overload != "maybe_inplace":
            continue
        position_of_node = aliases.order[node]
        for position, argument in zip(op.activation_positions, op.activations, strict=True):
            donated = node.args[position] if position < len(node.args) else None
            if not isinstance(donated, fx.Node):
                continue
            late = [
                reader
                for reader in aliases.readers(donated)
                if reader is not node and aliases.order[reader] > position_of_node
            ]
            if not late and any(aliases.of.get(n, set()) & aliases.of[donated] for n in returned):
                late = [output]
            if late:
                raise DonationError(
                    f"'{_user_name(donated)}' is donated to {op.name}.maybe_inplace (node "
                    f"'{node.name}', argument '{argument}') but it, or a view sharing its "
                    f"storage, is used afterwards by {_describe(late[0])}. A donated tensor may "
                    f"be overwritten. Clone it before the call, or call the functional "
                    f"{op.name}(...) instead."
                )
            if donated.op == "placeholder":
                donated_inputs.append(placeholders.index(donated))
        node.target = op.torch_op
    graph.lint()
    gm.recompile()
    return DonationInfo(tuple(sorted(set(donated_inputs))))
