"""Gated-MLP activation fusion: Hugging Face's ``act(a) * b`` becomes one opir op.

The rules (entries of :data:`opir.compiler.fusion_rules.RULES`) anchor on the
product, ``aten.mul.Tensor``, and recognise the activation on either operand in
the forms the ATen graphs hold it:

* as one node (``aten.silu``, ``aten.gelu`` with ``approximate``): the graph
  without Inductor;
* decomposed, as Inductor's joint graph holds it: SiLU ``s / (1 + exp(-s))`` (or
  ``s * sigmoid(s)``), GELU ``(s * 0.5) * (1 + erf(s * 0.7071...))``, GELU-tanh
  ``(s * 0.5) * (1 + tanh((s + s*s*s * 0.044715) * 0.7978...))``, where ``s`` is
  the input or, for bf16/fp16, its upcast to fp32 and the result is cast back.

``a`` and ``b`` from two linears (or any two tensors) give ``silu_mul(a, b)`` /
``gelu_mul(a, b, approximate)``; when they are the two halves of one tensor's
last dim (``chunk``/``split`` or two slices: a merged ``gate_up_proj``), the merged
op on that tensor: ``silu_and_mul(t)`` / ``gelu_and_mul(t, approximate)``, and
``mul_and_silu(t)`` when the activation is on the second half.

The rule does not fire, and says why in the compile report, when the operands'
dtypes differ (type promotion), their shapes differ (broadcasting), a value inside
the activation is used elsewhere, or the product is with a constant. Activations
that are not multiplied at all (an ungated MLP) are reported as "not a product".

Numerics: fusing replaces torch's activation arithmetic by the opir op's
contract (the activation computed in fp64 and rounded once to the dtype, then the
product rounded once). In fp32 the two agree to the op's tolerance. In bf16/fp16
stock eager computes the activation in fp32 (its own vectorised or scalar path),
which lands on the other side of a rounding boundary for a small share of inputs
(about 1% for GELU, as torch's own paths disagree among themselves), so a fused
model is not bit-identical to stock eager: it is bit-identical to the opir op's
native composition, and within the op's tolerance of stock eager. Inductor
without ``emulate_precision_casts`` also skips the 16-bit rounding of the
activation before the product, so stock ``torch.compile`` differs from stock
eager there too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import fx

from opir.compiler.fusion import Fused
from opir.compiler.fx_utils import val
from opir.ops import gelu_and_mul, gelu_mul, mul_and_silu, silu_and_mul, silu_mul

if TYPE_CHECKING:
    from opir.core.op import Op

aten = torch.ops.aten
_CAST = torch.ops.prims.convert_element_type.default
_TO_COPY = aten._to_copy.default
MUL = aten.mul.Tensor

SILU, GELU, GELU_TANH = "silu", "gelu", "gelu_tanh"
_SQRT1_2 = 0.7071067811865476
_BETA = 0.7978845608028654  # sqrt(2 / pi)
_KAPPA = 0.044715


# fx types every argument as the wide ``Argument`` union; a tensor argument of an aten op
# in a traced graph is always a node, so the matchers cast those (``cast(fx.Node, ...)``).


def _call(node: object, *targets: object) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _two(node: fx.Node) -> list[tuple[Any, Any]]:
    """Both operand orders of a commutative binary node."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return []
    x, y = node.args
    return [(x, y), (y, x)]


def _is_const(value: object, constant: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == constant


def _dtype(node: object) -> torch.dtype | None:
    v = val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


class Activation:
    """A recognised activation: its kind, input ``a`` and the nodes it consists of."""

    def __init__(self, kind: str, a: fx.Node, nodes: list[fx.Node]) -> None:
        self.kind, self.a, self.nodes = kind, a, nodes


def _upcast_input(s: object) -> fx.Node | None:
    """The activation's input: ``s`` itself, or x if ``s`` is x cast to fp32."""
    if not isinstance(s, fx.Node):
        return None
    if _call(s, _CAST, _TO_COPY) and _dtype(s) == torch.float32:
        inner = s.args[0]
        if isinstance(inner, fx.Node) and _dtype(inner) in (torch.bfloat16, torch.float16):
            return inner
    return s


def _plus_one(node: object) -> fx.Node | None:
    """f if node is ``f + 1`` (either order)."""
    if _call(node, aten.add.Tensor):
        for f, one in _two(node):
            if _is_const(one, 1) and isinstance(f, fx.Node):
                return f
    return None


def _times(node: object, constant: float) -> fx.Node | None:
    """x if node is ``x * constant`` (either order)."""
    if _call(node, MUL):
        for x, c in _two(node):
            if _is_const(c, constant) and isinstance(x, fx.Node):
                return x
    return None


def _silu_core(top: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    if _call(top, aten.silu.default):
        return cast(fx.Node, top.args[0]), [top]
    if _call(top, aten.div.Tensor) and len(top.args) == 2:  # s / (1 + exp(-s))
        s, denominator = top.args
        e = _plus_one(denominator)
        negated = e.args[0] if _call(e, aten.exp.default) else None
        if _call(negated, aten.neg.default) and negated.args[0] is s:
            return cast(fx.Node, s), [top, cast(fx.Node, denominator), cast(fx.Node, e), negated]
    if _call(top, MUL):  # s * sigmoid(s)
        for s, sig in _two(top):
            if _call(sig, aten.sigmoid.default) and sig.args[0] is s:
                return cast(fx.Node, s), [top, sig]
    return None


def _cube(node: object, s: fx.Node) -> list[fx.Node] | None:
    """Nodes of ``s*s*s`` (any association) or ``s ** 3``."""
    if _call(node, aten.pow.Tensor_Scalar) and node.args[0] is s and _is_const(node.args[1], 3):
        return [node]
    if _call(node, MUL):
        for x, y in _two(node):
            if y is s and _call(x, MUL) and x.args[0] is s and x.args[1] is s:
                return [node, x]
    return None


def _gelu_core(top: fx.Node) -> tuple[str, fx.Node, list[fx.Node]] | None:
    if _call(top, aten.gelu.default):
        approximate = top.kwargs.get("approximate", top.args[1] if len(top.args) > 1 else "none")
        return (GELU_TANH if approximate == "tanh" else GELU), cast(fx.Node, top.args[0]), [top]
    if not _call(top, MUL):
        return None
    for half, bracket in _two(top):  # (s * 0.5) * (1 + f(s))
        s = _times(half, 0.5)
        f = _plus_one(bracket)
        if s is None or f is None:
            continue
        nodes = [top, half, bracket, f]
        if _call(f, aten.erf.default) and _times(f.args[0], _SQRT1_2) is s:
            return GELU, s, [*nodes, f.args[0]]
        if _call(f, aten.tanh.default):
            inner = _times(f.args[0], _BETA)  # (s + s^3 * kappa) * beta
            if _call(inner, aten.add.Tensor):
                for x, k in _two(inner):
                    cube = _cube(_times(k, _KAPPA), s) if x is s else None
                    if cube is not None:
                        return GELU_TANH, s, [*nodes, f.args[0], inner, k, *cube]
    return None


def recognise(node: object) -> Activation | None:
    """The activation whose output is ``node`` (with an optional cast back), or None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    core, nodes = node, []
    if _call(node, _CAST, _TO_COPY) and isinstance(node.args[0], fx.Node):
        core, nodes = node.args[0], [node]
    silu = _silu_core(core)
    if silu is not None:
        kind, s, inner = SILU, *silu
    else:
        gelu = _gelu_core(core)
        if gelu is None:
            return None
        kind, s, inner = gelu
    a = _upcast_input(s)
    if a is None:
        return None
    if a is not s:
        inner.append(s)
    elif nodes:  # a cast back without an upcast: not the pattern torch produces
        return None
    return Activation(kind, a, [*nodes, *inner])


def _last_dim(t: fx.Node, dim: object) -> bool:
    v = val(t)
    return isinstance(dim, int) and isinstance(v, torch.Tensor) and dim in (-1, v.dim() - 1)


def _halves(a: fx.Node, b: fx.Node) -> tuple[fx.Node, bool] | None:
    """(t, gate_first) when ``a`` and ``b`` are the two halves of t's last dim."""

    if _call(a, operator.getitem) and _call(b, operator.getitem) and a.args[0] is b.args[0]:
        split = a.args[0]
        if _call(split, aten.split.Tensor, aten.split_with_sizes.default):
            t, dim = cast(fx.Node, split.args[0]), split.args[2] if len(split.args) > 2 else 0
            v = val(split)
            two_halves = len(v) == 2 and v[0].shape == v[1].shape
            if two_halves and _last_dim(t, dim) and {a.args[1], b.args[1]} == {0, 1}:
                return t, bool(a.args[1] == 0)
    if _call(a, aten.slice.Tensor) and _call(b, aten.slice.Tensor) and a.args[0] is b.args[0]:
        t = cast(fx.Node, a.args[0])
        full = val(t).shape[-1] if isinstance(val(t), torch.Tensor) else None
        if full is None or full % 2 or not (_last_dim(t, a.args[1]) and _last_dim(t, b.args[1])):
            return None
        d = full // 2
        ranges = []
        for s in (a, b):
            start = s.args[2] if len(s.args) > 2 else 0
            end = s.args[3] if len(s.args) > 3 else full
            step = s.args[4] if len(s.args) > 4 else 1
            if step != 1 or not isinstance(start, int) or not isinstance(end, int):
                return None
            ranges.append((start, min(end, full)))
        if ranges == [(0, d), (d, full)]:
            return t, True
        if ranges == [(d, full), (0, d)]:
            return t, False
    return None


def _used_outside(act: Activation, product: fx.Node) -> fx.Node | None:
    inside = {*act.nodes, product}
    for node in act.nodes:
        for user in node.users:
            if user not in inside:
                return node
    return None


def _match(kind: str) -> Callable[[fx.Node, tuple], Fused | str | None]:
    name = {SILU: "silu", GELU: "gelu", GELU_TANH: "gelu(tanh)"}[kind]
    approximate = "tanh" if kind == GELU_TANH else "none"

    def match(product: fx.Node, args: tuple) -> Fused | str | None:
        if len(args) != 2 or product.kwargs:
            return None
        first, other = args
        act = recognise(first)
        if act is None:
            first, other = other, first
            act = recognise(first)
        if act is None:
            return None
        if act.kind != kind:
            return None
        if not isinstance(other, fx.Node):
            return f"{name}(a) is multiplied by a constant, not by an up projection"
        a, b = act.a, other
        va, vb, vp = val(a), val(b), val(product)
        if not all(isinstance(v, torch.Tensor) for v in (va, vb, vp)):
            return f"{name}(a) * b: an operand is not a tensor"
        if not (va.dtype == vb.dtype == vp.dtype == _dtype(first)):
            return (
                f"dtype mismatch: {name}(a) is {_dtype(first)}, b is {vb.dtype} "
                f"(type promotion; opir's op takes one dtype)"
            )
        if not va.dtype.is_floating_point:
            return f"{name}(a) * b on {va.dtype}: not a floating-point MLP"
        if not (va.shape == vb.shape == vp.shape):
            return f"{name}(a) * b broadcasts ({list(va.shape)} x {list(vb.shape)})"
        shared = _used_outside(act, product)
        if shared is not None:
            return f"{name}(a) * b: '{shared.name}' inside the activation is used elsewhere"
        halves = _halves(a, b)
        op: Op
        call_args: tuple[object, ...]
        if halves is not None and (halves[1] or kind == SILU):
            t, gate_first = halves
            if kind == SILU:
                op = silu_and_mul if gate_first else mul_and_silu
                call_args = (t,)
            else:
                op, call_args = gelu_and_mul, (t, approximate)
        elif kind == SILU:
            op, call_args = silu_mul, (a, b)
        else:
            op, call_args = gelu_mul, (a, b, approximate)
        return Fused(op, call_args, {0: product}, (vp,), dead=tuple(act.nodes), single=True)

    return match


match_silu = _match(SILU)
match_gelu = _match(GELU)
match_gelu_tanh = _match(GELU_TANH)


def not_a_product(node: fx.Node, args: tuple) -> str | None:
    """Report an activation (anchored on its distinctive node) that no rule fused
    because nothing multiplies it: an ungated MLP (GPT-2, BERT) or a lone activation."""
    candidate = node
    for _ in range(6):  # walk up to the activation's output (cast back included)
        act = recognise(candidate)
        if act is not None and node in act.nodes:
            top = candidate
            if len(top.users) == 1 and recognise(cast := next(iter(top.users))) is not None:
                top = cast  # the activation's result cast back to the input's dtype
            if any(_call(u, MUL) for u in top.users):
                return None  # a product: the product rules fused it or said why not
            name = {SILU: "silu", GELU: "gelu", GELU_TANH: "gelu(tanh)"}[act.kind]
            return f"{name} is not multiplied by another tensor (not a gated MLP): not a product"
        if len(candidate.users) != 1:
            return None
        candidate = next(iter(candidate.users))
    return None


REPORT_ANCHORS = (
    aten.silu.default,
    aten.gelu.default,
    aten.exp.default,
    aten.sigmoid.default,
    aten.erf.default,
    aten.tanh.default,
)
"""Nodes an activation contains whatever its form: where ``not_a_product`` looks."""
