"""Clone elimination: drop the clones lowering put in front of in-place impls
when nothing can observe the difference.

A clone ``c = clone(src)`` feeding an in-place kernel is removed (the kernel
then writes into ``src``) only if all of these hold:

* ``src`` owns its buffer in this graph: no earlier node's value shares its
  storage (so it is not a view), or it is a graph input the user donated
  (``maybe_inplace``);
* nothing reading that storage — ``src`` itself or any alias of it, the
  graph's output included — comes after the clone, other than the clone;
* nothing reads the clone before the in-place kernel (its first user) writes it.

Aliasing comes from the fake tensors' storages (the compiler's one alias walk,
:class:`~opir.compiler.fx_utils.Aliases`). Keeping a clone is always correct,
only slower.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import fx

from opir.compiler.fx_utils import Aliases

CLONE_META = "opir_donation_clone"  # marks the clones lowering made for in-place impls


def _written_first(clone: fx.Node, order: dict[fx.Node, int]) -> bool:
    """The clone's first user is the kernel that writes it (lowering builds it so)."""
    first = min(clone.users, key=order.__getitem__)
    schema = getattr(first.target, "_schema", None)
    if schema is None:
        return False
    return any(
        a.alias_info is not None and a.alias_info.is_write
        for a, value in zip(schema.arguments, first.args, strict=False)
        if value is clone
    )


def eliminate_clones(graph: fx.Graph, donated_inputs: Collection[int] = ()) -> tuple[int, int]:
    """Remove provably unneeded donation clones; return (removed, kept)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    donated = {placeholders[i] for i in donated_inputs if i < len(placeholders)}
    removed = kept = 0
    aliases = Aliases(graph)
    for clone in [n for n in graph.nodes if n.meta.get(CLONE_META)]:
        src = clone.args[0]
        owns_buffer = isinstance(src, fx.Node) and (
            src in donated if src.op == "placeholder" else aliases.owns_storage(src)
        )
        late = owns_buffer and any(
            reader is not clone and aliases.order[reader] > aliases.order[clone]
            for reader in aliases.readers(src)
        )
        if owns_buffer and not late and clone.users and _written_first(clone, aliases.order):
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
