"""Clone elimination: drop the clones lowering put in front of in-place impls
when nothing can observe the difference.

A clone ``c = clone(src)`` feeding an in-place kernel is removed (the kernel
then writes into ``src``) only if all of these hold:

* ``src`` owns its buffer in this graph: it is produced by a non-view op, or
  it is a graph input that the user donated (``maybe_inplace``);
* no alias of ``src`` — ``src`` itself or any view made from it in the graph —
  is used by anything ordered after the clone, other than the clone (so
  nobody can read the overwritten values, including the graph's output);
* nothing reads the clone before the in-place kernel (its first user) writes
  it; later users read the kernel's result, which now lives in ``src``.

Not handled, so their clones stay: ``src`` that is itself a view of another
tensor, graph inputs that were not donated, and buffers aliased outside the
graph. Keeping a clone is always correct, only slower.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import fx

from opir.compiler.graph_utils import is_view, positions
from opir.compiler.lowering import CLONE_META


def _aliases(node: fx.Node) -> list[fx.Node]:
    found, stack = [node], [node]
    while stack:
        for user in stack.pop().users:
            if is_view(user) and user.args and user.args[0] in found:
                found.append(user)
                stack.append(user)
    return found


def _written_first(clone: fx.Node, order: dict[fx.Node, int]) -> bool:
    """The clone's first user is the kernel that writes it (lowering builds it so)."""
    first = min(clone.users, key=order.__getitem__)
    target = first.target
    schema = getattr(target, "_schema", None)
    return bool(schema) and any(
        a.alias_info is not None and a.alias_info.is_write
        for a, value in zip(schema.arguments, first.args, strict=False)
        if value is clone
    )


def eliminate_clones(graph: fx.Graph, donated_inputs: Collection[int] = ()) -> tuple[int, int]:
    """Remove provably unneeded donation clones; return (removed, kept)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    donated = {placeholders[i] for i in donated_inputs if i < len(placeholders)}
    removed = kept = 0
    order = positions(graph)
    for clone in [n for n in graph.nodes if n.meta.get(CLONE_META)]:
        src = clone.args[0]
        owns_buffer = isinstance(src, fx.Node) and (
            (src.op == "placeholder" and src in donated)
            or (src.op == "call_function" and not is_view(src))
        )
        late = (
            [
                user
                for alias in _aliases(src)
                for user in alias.users
                if user is not clone and order[user] > order[clone]
            ]
            if owns_buffer
            else [None]
        )
        if owns_buffer and not late and _written_first(clone, order):
            clone.replace_all_uses_with(src)
            graph.erase_node(clone)
            removed += 1
        else:
            kept += 1
    graph.lint()
    return removed, kept


def count_clones(graph: fx.Graph) -> int:
    return sum(
        1
        for n in graph.nodes
        if n.op == "call_function" and n.target is torch.ops.aten.clone.default
    )
