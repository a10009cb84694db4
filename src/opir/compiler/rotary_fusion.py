"""Rotary embedding fusion: Hugging Face's RoPE expression and the q/k norms before it.

Three patterns, each an entry of :data:`opir.compiler.fusion_rules.RULES`:

* ``rotary_pos_emb`` (anchored on ``aten.add.Tensor``): transformers'
  ``apply_rotary_pos_emb`` as the ATen graph holds it,
  ``q * cos.unsqueeze(d) + cat(-q[..., h:], q[..., :h]) * sin.unsqueeze(d)`` for q
  and for k with the same ``cos``/``sin`` (``h`` half the rotated width; products
  and sum in either operand order). Partial rotary (Phi-3 style) rotates
  ``q[..., :rd]`` and concatenates ``q[..., rd:]``: the rule takes the whole
  ``cat`` and passes ``q``. It becomes ``rotary_pos_emb(q, k, cos, sin, d)``, whose
  native is that expression op for op: bit-identical.
* ``qk_norm_rotary_pos_emb``: per-head norms (opir ``rms_norm`` nodes, as
  ``opir.integrations`` or opir layers put them in the graph) feeding the rotation,
  either through ``transpose(1, 2)`` (Qwen3: the norm runs on ``[b, seq, h, d]``)
  or directly (Gemma 3: it runs after the transpose). The rotation is either the
  expression above or an opir ``rotary_pos_emb`` node (two anchors). With the
  transpose it becomes ``qk_norm_rotary_pos_emb(q_bshd, k_bshd, ...,
  unsqueeze_dim=2)`` followed by ``transpose(1, 2)`` of both outputs: RoPE is
  elementwise per (token, head) row with cos/sin broadcast over heads, so rotating
  before the transpose is the same arithmetic on the same values (bit-identical).
* ``qk_norm_rope`` (anchored on ``rotary_embedding``): vLLM's Qwen3 attention,
  ``rms_norm(q.view(tokens, heads, head_size)).view(q.shape)`` (and k) into
  ``rotary_embedding``, becomes ``qk_norm_rope(positions, q, k, ...)``, whose
  native is the two natives in sequence.

The rules do not fire, and the compile report says why (against the norms for
the q/k-norm rules, against the ``add`` for the rotation), when: dtypes differ
(cos/sin of another dtype than q: type promotion), the two norms differ in
epsilon or ``weight_bias``, a norm uses ``variance_size``/``fp32_multiply`` (the
fused ops have neither), only one of q and k is normed, a norm's output (or a
value inside the rotation) has another user, ``key`` is None, cos/sin are not
unsqueezed ``[batch, seq, rotary_dim]`` tensors, no second tensor is rotated by
the same cos/sin, or the fused op's own checks reject the arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeGuard, cast

import torch
from torch import fx

from opir.compiler.fusion import Fused, Skip, _fake_call
from opir.compiler.fx_utils import getitem_users, positions, val
from opir.ops import qk_norm_rope, qk_norm_rotary_pos_emb, rms_norm, rotary_pos_emb

aten = torch.ops.aten
ADD = aten.add.Tensor
MUL = aten.mul.Tensor
_SLICE = aten.slice.Tensor
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
RMS_NORM = rms_norm.torch_op
_QK_HF = "qk_norm_rotary_pos_emb"
ROTARY_POS_EMB = rotary_pos_emb.torch_op


def _call(node: object, *targets: object) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _tensor(node: object) -> torch.Tensor | None:
    v = val(node)
    return v if isinstance(v, torch.Tensor) else None


def _last(node: object, dim: object) -> bool:
    t = _tensor(node)
    return t is not None and isinstance(dim, int) and dim in (-1, t.dim() - 1)


def _pairs(node: fx.Node) -> list[tuple[Any, Any]]:
    """Both operand orders of a plain binary add/mul."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return []
    a, b = node.args
    return [(a, b), (b, a)]


def _slice_of(node: object) -> tuple[fx.Node, int, int] | None:
    """(x, start, end) if node is ``x[..., start:end]`` (last dim, step 1, ints)."""
    if not _call(node, _SLICE):
        return None
    x = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    t = _tensor(x)
    if t is None or not _last(x, dim) or step != 1 or not isinstance(t.shape[-1], int):
        return None
    full = t.shape[-1]
    end = full if end is None else end
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    return cast(fx.Node, x), start, min(end, full)


def _rotate_half(node: object) -> tuple[fx.Node, list[fx.Node]] | None:
    """(x, nodes) if node is ``cat((-x[..., h:], x[..., :h]), -1)``, h half x's last dim."""
    if not _call(node, aten.cat.default):
        return None
    parts = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not _last(node, dim):
        return None
    neg, first = parts
    if not _call(neg, aten.neg.default):
        return None
    second, low = _slice_of(neg.args[0]), _slice_of(first)
    if second is None or low is None or second[0] is not low[0]:
        return None
    x = second[0]
    full = cast(torch.Tensor, _tensor(x)).shape[-1]
    if full % 2 or second[1:] != (full // 2, full) or low[1:] != (0, full // 2):
        return None
    return x, [node, neg, cast(fx.Node, neg.args[0]), cast(fx.Node, first)]


@dataclasses.dataclass
class Rotation:
    """``out = x * cos_u + rotate_half(x) * sin_u`` recognised in the graph.

    ``base``: the tensor whose first ``rd`` columns ``x`` is (``x`` itself without
    partial rotary); ``out``: the node holding the result for all of ``base`` (the
    add, or the ``cat`` with the passed-through columns); ``nodes``: every node of
    the expression, ``out`` included.
    """

    add: fx.Node
    x: fx.Node
    base: fx.Node
    out: fx.Node
    cos_u: fx.Node
    sin_u: fx.Node
    nodes: list[fx.Node]


def recognise(add: object) -> Rotation | None:
    """The rotation whose sum is ``add``, or None."""
    if not _call(add, ADD):
        return None
    for m1, m2 in _pairs(add):
        if not (_call(m1, MUL) and _call(m2, MUL)):
            continue
        for r, sin_u in _pairs(m2):
            half = _rotate_half(r)
            if half is None or not isinstance(sin_u, fx.Node):
                continue
            x, inner = half
            for x1, cos_u in _pairs(m1):
                if x1 is x and isinstance(cos_u, fx.Node):
                    nodes = [add, m1, m2, *inner]
                    return _with_pass_through(Rotation(add, x, x, add, cos_u, sin_u, nodes))
    return None


def _with_pass_through(rot: Rotation) -> Rotation:
    """Extend a rotation of ``q[..., :rd]`` to ``cat((rotated, q[..., rd:]), -1)``."""
    head = _slice_of(rot.x)
    if head is None or head[1] != 0 or len(rot.add.users) != 1:
        return rot
    cat = next(iter(rot.add.users))
    if not _call(cat, aten.cat.default) or not _last(cat, cat.args[1] if len(cat.args) > 1 else 0):
        return rot
    parts = cat.args[0]
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or parts[0] is not rot.add:
        return rot
    base, rd = head[0], head[2]
    rest = _slice_of(parts[1])
    full = cast(torch.Tensor, _tensor(base)).shape[-1]
    if rest is None or rest[0] is not base or rest[1:] != (rd, full):
        return rot
    nodes = [*rot.nodes, cat, rot.x, cast(fx.Node, parts[1])]
    return dataclasses.replace(rot, base=base, out=cat, nodes=nodes)


def _used_outside(nodes: list[fx.Node], *also: fx.Node) -> fx.Node | None:
    """A node of ``nodes`` (its result excepted: the last one's users are free) read by a
    node outside ``nodes`` and ``also``."""
    inside = {*nodes, *also}
    for node in nodes:
        if node is nodes[-1]:
            continue
        if any(user not in inside for user in node.users):
            return node
    return None


def _inner_nodes(rot: Rotation) -> list[fx.Node]:
    """The rotation's nodes with its result last."""
    return [*(n for n in rot.nodes if n is not rot.out), rot.out]


def _unsqueezed(node: fx.Node) -> tuple[fx.Node, int] | None:
    if _call(node, aten.unsqueeze.default) and isinstance(node.args[1], int):
        return cast(fx.Node, node.args[0]), node.args[1]
    return None


def _partner(rot: Rotation, order: dict[fx.Node, int]) -> Rotation | None:
    """The other tensor rotated by the same cos/sin: the nearest later one (q's partner
    k), else the nearest earlier one (k's, when q was left unfused)."""
    here = order[rot.add]
    best: Rotation | None = None
    best_key = (2, 0)
    for mul in rot.cos_u.users:
        for add in mul.users:
            if add is rot.add or add._erased or add not in order:
                continue
            other = recognise(add)
            if other is None or other.cos_u is not rot.cos_u or other.sin_u is not rot.sin_u:
                continue
            distance = order[add] - here
            key = (0, distance) if distance > 0 else (1, -distance)
            if key < best_key:
                best, best_key = other, key
    return best


@dataclasses.dataclass
class _Pair:
    """q's and k's rotations by the same cos/sin, checked for ``rotary_pos_emb``."""

    q: Rotation
    k: Rotation
    cos: fx.Node
    sin: fx.Node
    dim: int


def _pair(add: fx.Node) -> _Pair | str | None:
    q = recognise(add)
    if q is None:
        return None
    k = _partner(q, positions(add.graph))
    if k is None:
        return (
            "rotary_pos_emb rotates q and k together: no second tensor is rotated by "
            "the same cos/sin"
        )
    cos, sin = _unsqueezed(q.cos_u), _unsqueezed(q.sin_u)
    if cos is None or sin is None or cos[1] != sin[1]:
        return (
            "cos/sin are not cos.unsqueeze(d)/sin.unsqueeze(d) of [batch, seq, rotary_dim] "
            "tensors (rotary_pos_emb takes them before the unsqueeze)"
        )
    dtypes = {
        name: cast(torch.Tensor, _tensor(node)).dtype
        for name, node in (("q", q.x), ("k", k.x), ("cos", q.cos_u), ("sin", q.sin_u))
    }
    if len(set(dtypes.values())) != 1:
        listed = ", ".join(f"{n} {str(d).removeprefix('torch.')}" for n, d in dtypes.items())
        return f"dtype mismatch ({listed}): type promotion; the fused op takes one dtype"
    for rot in (q, k):
        shared = _used_outside(_inner_nodes(rot))
        if shared is not None:
            return f"'{shared.name}' inside the rotation is used elsewhere"
    return _Pair(q, k, cos[0], sin[0], cos[1])


def _checked(op: Any, args: tuple) -> str | None:
    """Why ``op`` would reject ``args`` (their fake values), or None."""
    try:
        _fake_call(op.torch_op, args)
    except ValueError as e:
        return f"{op.name} would reject the arguments: {e}"
    return None


def match_rotary(add: fx.Node, args: tuple) -> Fused | str | None:
    """``q*cos + rotate_half(q)*sin`` (and k) -> ``rotary_pos_emb``."""
    pair = _pair(add)
    if not isinstance(pair, _Pair):
        return pair if pair is None else f"rotary_pos_emb: {pair}"
    call = (pair.q.base, pair.k.base, pair.cos, pair.sin, pair.dim)
    why = _checked(rotary_pos_emb, call)
    if why is not None:
        return why
    dead = (*pair.q.nodes, *pair.k.nodes, pair.q.cos_u, pair.q.sin_u)
    return Fused(rotary_pos_emb, call, {0: pair.q.out, 1: pair.k.out}, None, dead=dead)


# ----------------------------------------------------------------- q/k norms, HF form


def _is_swap12(node: fx.Node) -> bool:
    """``x.transpose(1, 2)`` of a 4-D x (Inductor's graphs spell it as a permute)."""
    t = _tensor(node)
    if t is None or t.dim() != 4:
        return False
    if _call(node, aten.transpose.int):
        dims = {d % 4 for d in node.args[1:3] if isinstance(d, int)}
        return len(node.args) == 3 and dims == {1, 2}
    if _call(node, aten.permute.default):
        order = node.args[1]
        if not isinstance(order, (list, tuple)) or not all(isinstance(d, int) for d in order):
            return False
        return [cast(int, d) % 4 for d in order] == [0, 2, 1, 3]
    return False


@dataclasses.dataclass
class _Normed:
    norm: fx.Node
    x: fx.Node
    weight: Any
    epsilon: Any
    variance_size: Any
    weight_bias: Any
    fp32_multiply: Any
    transpose: fx.Node | None


def _normed(t: object) -> _Normed | None:
    """``t`` as ``rms_norm(x, ...)``, optionally followed by ``transpose(1, 2)``."""
    transpose = None
    if isinstance(t, fx.Node) and _is_swap12(t) and _tensor(t) is not None:
        transpose, t = t, t.args[0]
    if not _call(t, RMS_NORM):
        return None
    x, w, eps, vs, bias, fp32 = rms_norm.complete_args(tuple(t.args), dict(t.kwargs))
    return _Normed(t, x, w, eps, vs, bias, fp32, transpose)


def _norm_nodes(*normed: _Normed | None) -> tuple[fx.Node, ...]:
    return tuple(n.norm for n in normed if n is not None)


def _norms_mismatch(q: _Normed, k: _Normed) -> str | None:
    """Why these two per-head norms cannot become one fused op's norms, or None."""
    if (q.transpose is None) != (k.transpose is None):
        return "one of the q/k norms is transposed before the rotation, the other is not"
    for n, name in ((q, "q"), (k, "k")):
        if n.weight is None:
            return f"the {name} norm has no weight (the fused op takes q_weight and k_weight)"
        if n.variance_size is not None:
            return f"the {name} norm uses variance_size (the fused op normalises whole heads)"
        if n.fp32_multiply:
            return f"the {name} norm uses fp32_multiply (the fused op has no such mode)"
    if q.epsilon != k.epsilon:
        return f"epsilon mismatch: q norm {q.epsilon}, k norm {k.epsilon}"
    if q.weight_bias != k.weight_bias:
        return f"weight_bias mismatch: q norm {q.weight_bias}, k norm {k.weight_bias}"
    return None


def _other_users(n: _Normed, readers: set[fx.Node]) -> bool:
    """True if the norm (or its transpose) is read by anything but ``readers``."""
    if n.transpose is not None:
        return set(n.norm.users) != {n.transpose} or not set(n.transpose.users) <= readers
    return not set(n.norm.users) <= readers


def _qk_norm_hf(
    q: object, k: object, dim: int, cos: fx.Node, sin: fx.Node, readers: set[fx.Node],
    outputs: dict[int, fx.Node], dead: tuple[fx.Node, ...],
) -> Fused | Skip | None:  # fmt: skip
    qn, kn = _normed(q), _normed(k)
    if qn is None and kn is None:
        return None
    if qn is None or kn is None:
        which = "q" if qn is not None else "k"
        return Skip(_norm_nodes(qn, kn), f"{_QK_HF}: only {which} is normed")
    nodes = (qn.norm, kn.norm)
    why = _norms_mismatch(qn, kn)
    if why is None and (_other_users(qn, readers) or _other_users(kn, readers)):
        why = "the norm output has another user besides the rotation"
    view = None
    if why is None and qn.transpose is not None:
        cos_t = _tensor(cos)
        d = dim % (cos_t.dim() + 1) if cos_t is not None else -1
        if cos_t is None or cos_t.dim() != 3 or d not in (1, 2):
            why = f"cos.unsqueeze({dim}) does not broadcast over the transposed heads dim"
        else:
            dim, view = 3 - d, (aten.permute.default, ([0, 2, 1, 3],))  # transpose(1, 2)
    call = (qn.x, kn.x, qn.weight, kn.weight, qn.epsilon, cos, sin, dim, qn.weight_bias)
    if why is None:
        why = _checked(qk_norm_rotary_pos_emb, call)
    if why is not None:
        return Skip(nodes, f"{_QK_HF}: {why}")
    transposes = tuple(n.transpose for n in (qn, kn) if n.transpose is not None)
    return Fused(
        qk_norm_rotary_pos_emb, call, outputs, None, dead=(*dead, *transposes, *nodes), view=view
    )


def match_qk_norm_expression(add: fx.Node, args: tuple) -> Fused | Skip | None:
    """Per-head norms -> (transpose) -> Hugging Face's RoPE expression."""
    pair = _pair(add)
    if isinstance(pair, str):  # the rotation does not fuse: nor does the norm before it
        rotation = cast(Rotation, recognise(add))
        normed = _normed(rotation.base)
        return None if normed is None else Skip((normed.norm,), f"{_QK_HF}: {pair}")
    if pair is None:
        return None
    readers = {*pair.q.nodes, *pair.k.nodes}
    dead = (*pair.q.nodes, *pair.k.nodes, pair.q.cos_u, pair.q.sin_u)
    return _qk_norm_hf(
        pair.q.base, pair.k.base, pair.dim, pair.cos, pair.sin, readers,
        {0: pair.q.out, 1: pair.k.out}, dead,
    )  # fmt: skip


def _outputs(node: fx.Node) -> dict[int, fx.Node] | None:
    """Output index -> the one getitem reading it (None if any output has several)."""
    users = getitem_users(node)
    if len(users) != len(node.users) or any(len(u) != 1 for u in users.values()):
        return None
    return {index: found[0] for index, found in users.items()}


def match_qk_norm_op(node: fx.Node, args: tuple) -> Fused | Skip | None:
    """Per-head norms -> (transpose) -> an opir ``rotary_pos_emb`` node."""
    q, k, cos, sin, dim = args
    outputs = _outputs(node)
    if outputs is None or not isinstance(dim, int):
        return None
    return _qk_norm_hf(q, k, dim, cos, sin, {node}, outputs, (node,))


# --------------------------------------------------------------- q/k norms, vLLM form


def _per_head(t: object) -> tuple[_Normed, fx.Node, fx.Node | None] | None:
    """(norm, the tensor to pass as query/key, the view back) if ``t`` is
    ``rms_norm(x.view(tokens, heads, head_size)).view(x.shape)`` or a 3-D ``rms_norm``."""
    back = None
    if _call(t, *_VIEWS):
        back, t = t, t.args[0]
    n = _normed(t)
    if n is None or n.transpose is not None:
        return None
    if back is None:
        return n, n.x, None
    inner = n.x
    if not _call(inner, *_VIEWS):
        return None
    source = cast(fx.Node, inner.args[0])
    vs, vb = _tensor(source), _tensor(back)
    if vs is None or vb is None or vs.shape != vb.shape:
        return None
    return n, source, back


def match_qk_norm_rope(node: fx.Node, args: tuple) -> Fused | Skip | None:
    """vLLM: per-head norms -> view back -> ``rotary_embedding`` -> ``qk_norm_rope``."""
    positions_, query, key, head_size, cache, neox, rotary_dim = args
    q = _per_head(query)
    k = _per_head(key) if key is not None else None
    if q is None and k is None:
        return None
    nodes = tuple(found[0].norm for found in (q, k) if found is not None)
    if key is None:
        return Skip(nodes, "qk_norm_rope: key is None (the fused op needs both q and k)")
    if q is None or k is None:
        which = "query" if q is not None else "key"
        return Skip(nodes, f"qk_norm_rope: only {which} is normed per head")
    why = _norms_mismatch(q[0], k[0])
    for n, name in ((q[0], "query"), (k[0], "key")):
        width = cast(torch.Tensor, _tensor(n.x)).shape[-1]
        if why is None and width != head_size:
            why = f"the {name} norm is not per head (it normalises {width} columns, "
            why += f"head_size is {head_size})"
    for n, _, back in (q, k):
        if why is None and (
            (back is not None and (set(n.norm.users) != {back} or set(back.users) != {node}))
            or (back is None and set(n.norm.users) != {node})
        ):
            why = "the norm output has another user besides the rotary embedding"
    outputs = _outputs(node)
    if why is None and outputs is None:
        why = "an output of rotary_embedding is read in an unusual way"
    call = (
        positions_, q[1], k[1], q[0].weight, k[0].weight, q[0].epsilon, head_size, cache,
        neox, rotary_dim, q[0].weight_bias,
    )  # fmt: skip
    if why is None:
        why = _checked(qk_norm_rope, call)
    if why is not None or outputs is None:
        return Skip(nodes, f"qk_norm_rope: {why}")
    views = tuple(back for _, _, back in (q, k) if back is not None)
    return Fused(qk_norm_rope, call, outputs, None, dead=(node, *views, *nodes))


__all__ = [
    "match_qk_norm_expression",
    "match_qk_norm_op",
    "match_qk_norm_rope",
    "match_rotary",
    "recognise",
]
