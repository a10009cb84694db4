"""Norm/activation -> quant fusion: the quantisation of a norm's (or SwiGLU's) output
becomes one fused opir op.

The rules anchor on the quant op (``static_quant``, ``dynamic_quant`` per token,
``dynamic_group_quant``) and look at what produced its input:

============================  =====================  =================================
producer of the quant input   quant                  fused op
============================  =====================  =================================
``rms_norm``                  static                 ``rms_norm_quant``
``rms_norm``                  dynamic (per token)    ``rms_norm_dynamic_quant``
``rms_norm``                  dynamic group          ``rms_norm_group_quant``
``fused_add_rms_norm`` [0]    static                 ``fused_add_rms_norm_quant``
``fused_add_rms_norm`` [0]    dynamic (per token)    ``fused_add_rms_norm_dynamic_quant``
``silu_and_mul``              static                 ``silu_and_mul_quant``
``silu_and_mul``              dynamic (per token)    ``silu_and_mul_dynamic_quant``
``all_reduce_rms_norm`` [0]   static                 ``all_reduce_rms_norm_quant``
============================  =====================  =================================

They come after the norm and activation rules in the table, so they also see what
those rules made: ``add -> rms_norm -> quant`` becomes ``fused_add_rms_norm`` and
then ``fused_add_rms_norm_quant``; ``all_reduce -> (add) -> rms_norm -> quant``
becomes ``all_reduce_rms_norm`` and then ``all_reduce_rms_norm_quant``; Hugging
Face's ``silu(gate) * up`` over a merged ``gate_up_proj`` becomes ``silu_and_mul``
and then ``silu_and_mul_(dynamic_)quant``. The biggest fused op wins (supersets
first) because each step grows the fused op by one more producer.

Numerics: each fused op's native *is* the composition of the two natives (the
intermediate rounded to x's dtype, as the unfused graph rounds it), so this step
is bit-identical to the graph it replaces. It does not fire, and says why in the
compile report, when the intermediate (the norm's or activation's output) has
another user, when a dtype cast or a view sits between the producer and the
quant (opir's ``QuantLinear`` quantises before it flattens the tokens, so its
graphs have none), for a norm with ``variance_size`` or ``fp32_multiply`` (the
fused ops have neither), for per-tensor dynamic quant (no fused op), and when the
platform policy (``Options.fuse_quant``) says the fused op would not run a
hand-written kernel.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable

import torch
from torch import fx

from opir.compiler.fusion import Fused, Rule
from opir.compiler.fx_utils import val
from opir.core.op import Op
from opir.ops import (
    all_reduce_rms_norm,
    all_reduce_rms_norm_quant,
    dynamic_group_quant,
    dynamic_quant,
    fused_add_rms_norm,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    gelu_and_mul,
    gelu_mul,
    mul_and_silu,
    rms_norm,
    rms_norm_dynamic_quant,
    rms_norm_group_quant,
    rms_norm_quant,
    silu_and_mul,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    silu_mul,
    static_quant,
)

aten = torch.ops.aten
_CASTS = (torch.ops.prims.convert_element_type.default, aten._to_copy.default)
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
STATIC, DYNAMIC, GROUP = "static", "dynamic", "group"

Gate = Callable[[Fused], "str | None"]
"""Decides whether a match may fuse (the platform policy): None, or why not."""


def _name(node: fx.Node) -> str:
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return str(schema.name.split("::")[-1])
    return str(getattr(node.target, "__name__", node.target))


def _other_user(intermediate: fx.Node, quant: fx.Node) -> str | None:
    others = [u for u in intermediate.users if u is not quant]
    if others:
        return (
            f"the quant's input '{intermediate.name}' is also used by '{others[0].name}' "
            "(the fused op does not return the unquantised value)"
        )
    return None


def _outputs(node: fx.Node, kind: str) -> dict[int, fx.Node]:
    """Output index -> node to replace: the quant itself (static) or its getitems."""
    if kind == STATIC:
        return {0: node}
    return {typing.cast(int, u.args[1]): u for u in node.users if u.target is operator.getitem}


def _norm_ok(h: fx.Node, variance_size: object, fp32_multiply: object, op: str) -> str | None:
    size = val(h).shape[-1] if isinstance(val(h), torch.Tensor) else None
    if variance_size is not None and variance_size != size:
        return f"{op} has variance_size={variance_size}: the fused quant ops have none"
    if fp32_multiply:
        return f"{op} has fp32_multiply=True: the fused quant ops have none"
    return None


def _match(
    kind: str, op: Op | None, gate: Gate | None
) -> Callable[[fx.Node, tuple], Fused | str | None]:
    """The match of the rule making ``op`` (None: only report why a quant stays)."""

    def match(node: fx.Node, args: tuple) -> Fused | str | None:
        found = _fused(node, args, kind)
        if isinstance(found, Fused):
            if found.op is not op:
                return None
            if gate is not None:
                return gate(found) or found
        return found

    return match


def _fused(node: fx.Node, args: tuple, kind: str) -> Fused | str | None:
    x = args[0]
    if not isinstance(x, fx.Node):
        return None
    outs = _outputs(node, kind)
    out_vals = val(node) if kind != STATIC else (val(node),)
    if kind == DYNAMIC:
        _, dtype, per_token, scale_ub = args
    elif kind == STATIC:
        _, scale, dtype = args
    else:
        _, dtype, group_size, column_major, ue8m0 = args
    source = x
    if x.target is operator.getitem and x.args[1] == 0 and isinstance(x.args[0], fx.Node):
        source = x.args[0]
    if x.op != "call_function":
        return None
    if x.target in _CASTS or x.target in _VIEWS:
        inner = x.args[0]
        if isinstance(inner, fx.Node) and inner.op == "call_function":
            producer = inner.args[0] if inner.target is operator.getitem else inner
            if isinstance(producer, fx.Node) and producer.target in _PRODUCERS:
                what = "a dtype cast" if x.target in _CASTS else "a view/reshape"
                return (
                    f"{what} sits between {_name(producer)} and the quant "
                    "(the fused op quantises the producer's own output)"
                )
        return None
    target = source.target
    if target not in _PRODUCERS:
        return None
    producer = _name(source)
    if kind == DYNAMIC and not per_token:
        return f"{producer} -> per-tensor dynamic_quant: no fused op (only per-token)"
    reason = _other_user(x, node)
    if reason is not None:
        return reason
    if target is rms_norm.torch_op:
        h, weight, eps, size, bias, fp32_multiply = rms_norm.complete_args(
            tuple(source.args), dict(source.kwargs)
        )
        reason = _norm_ok(h, size, fp32_multiply, producer)
        if reason is not None:
            return reason
        if kind == STATIC:
            return Fused(rms_norm_quant, (h, weight, eps, scale, dtype, bias), outs, out_vals,
                         dead=(x,), single=True)  # fmt: skip
        if kind == DYNAMIC:
            return Fused(rms_norm_dynamic_quant, (h, weight, eps, dtype, scale_ub, bias), outs,
                         out_vals, dead=(node, x))  # fmt: skip
        call = (h, weight, eps, dtype, group_size, column_major, ue8m0, bias)
        return Fused(rms_norm_group_quant, call, outs, out_vals, dead=(node, x))
    if target is fused_add_rms_norm.torch_op:
        h, residual, weight, eps, size, bias, fp32_multiply = fused_add_rms_norm.complete_args(
            tuple(source.args), dict(source.kwargs)
        )
        reason = _norm_ok(h, size, fp32_multiply, producer)
        if reason is not None:
            return reason
        res = [u for u in source.users if u.target is operator.getitem and u.args[1] == 1]
        res_val = val(source)[1]
        if kind == STATIC:
            outputs = {0: node, **({1: res[0]} if res else {})}
            return Fused(fused_add_rms_norm_quant, (h, residual, weight, eps, scale, dtype, bias),
                         outputs, (*out_vals, res_val), dead=(x, source))  # fmt: skip
        if kind == DYNAMIC:
            outputs = {**outs, **({2: res[0]} if res else {})}
            dynamic_call = (h, residual, weight, eps, dtype, scale_ub, bias)
            return Fused(fused_add_rms_norm_dynamic_quant, dynamic_call, outputs,
                         (*out_vals, res_val), dead=(node, x, source))  # fmt: skip
        return (
            f"{producer} -> dynamic_group_quant: no fused op (rms_norm_group_quant has no residual)"
        )
    if target is all_reduce_rms_norm.torch_op:
        t, residual, weight, eps, size, bias = all_reduce_rms_norm.complete_args(
            tuple(source.args), dict(source.kwargs)
        )
        if kind != STATIC:
            return f"{producer} -> {kind} quant: no fused op (all_reduce_rms_norm_quant is static)"
        res = [u for u in source.users if u.target is operator.getitem and u.args[1] == 1]
        outputs = {0: node, **({1: res[0]} if res else {})}
        call = (t, residual, weight, eps, scale, dtype, size, bias)
        return Fused(all_reduce_rms_norm_quant, call, outputs, (*out_vals, val(source)[1]),
                     dead=(x, source))  # fmt: skip
    if target is silu_and_mul.torch_op:
        (t,) = silu_and_mul.complete_args(tuple(source.args), dict(source.kwargs))
        if kind == STATIC:
            return Fused(silu_and_mul_quant, (t, scale, dtype), outs, out_vals, (x,), True)
        if kind == DYNAMIC:
            return Fused(silu_and_mul_dynamic_quant, (t, dtype, scale_ub), outs, out_vals,
                         dead=(node, x))  # fmt: skip
        return "silu_and_mul -> dynamic_group_quant: no fused op"
    return f"{producer} -> {kind} quant: no fused quant op for {producer} (only silu_and_mul)"


_PRODUCERS = {
    op.torch_op
    for op in (
        rms_norm,
        fused_add_rms_norm,
        all_reduce_rms_norm,
        silu_and_mul,
        silu_mul,
        mul_and_silu,
        gelu_and_mul,
        gelu_mul,
    )
}


_TABLE: tuple[tuple[Op, str, Op], ...] = (
    # (fused op, quant kind, anchor): the rule is named after the op it makes
    (all_reduce_rms_norm_quant, STATIC, static_quant),
    (fused_add_rms_norm_quant, STATIC, static_quant),
    (fused_add_rms_norm_dynamic_quant, DYNAMIC, dynamic_quant),
    (rms_norm_quant, STATIC, static_quant),
    (rms_norm_dynamic_quant, DYNAMIC, dynamic_quant),
    (rms_norm_group_quant, GROUP, dynamic_group_quant),
    (silu_and_mul_quant, STATIC, static_quant),
    (silu_and_mul_dynamic_quant, DYNAMIC, dynamic_quant),
)


def rules(gate: Gate | None = None) -> tuple[Rule, ...]:
    """One rule per fused quant op, named after it; ``gate`` (the platform policy) may
    veto a match (the report then shows its reason)."""
    return tuple(Rule(op.name, anchor, _match(kind, op, gate)) for op, kind, anchor in _TABLE)
