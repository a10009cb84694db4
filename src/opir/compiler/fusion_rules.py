"""The fusion rules, in priority order (a rule whose pattern contains another's first).

``add_rms_norm``: ``h = x + residual; y = rms_norm(h, w, eps)`` becomes
``y, h' = fused_add_rms_norm(x, residual, w, eps)`` with every later use of
``h`` reading ``h'``. In fp32 both are identical. In bf16/fp16 ``h'`` is
bit-identical to ``h`` (an aten add of reduced-precision tensors also adds in
fp32 and rounds once), and ``y`` differs only because the fused op normalises
the unrounded fp32 sum: within the op's tolerance. It does not fire unless
``x``, ``residual`` and ``h`` have one dtype and one shape (no promotion, no
broadcast) and the add is a plain ``x + residual`` (alpha 1). Epsilon,
``variance_size`` and ``weight_bias`` are read from the matched node.

All-reduce rules (tensor parallelism): ``all_reduce -> add -> rms_norm``,
``all_reduce -> fused_add_rms_norm`` and ``all_reduce -> rms_norm`` become
``all_reduce_rms_norm``. A weight computed as ``w.float() + 1.0`` (the old
Gemma form) becomes the raw ``w`` with ``weight_bias=1.0``. Any other weight
must have x's dtype (the dtype guard: fused all-reduce kernels take a weight
of the activation dtype), otherwise the rule does not fire.

Gated-MLP activations (``activation_fusion``): ``silu(a) * b``, ``gelu(a) * b`` and
``gelu_tanh(a) * b`` become ``silu_mul``/``gelu_mul`` or, when ``a`` and ``b`` are the
halves of one tensor, ``silu_and_mul``/``mul_and_silu``/``gelu_and_mul``; fusing
applies the op's fp64-once activation contract (bit-identical to opir's native
composition, within tolerance of torch's own activation; see that module).

Rotary embeddings (``rotary_fusion``): transformers' ``q * cos + rotate_half(q) * sin``
(q and k, partial rotary included) becomes ``rotary_pos_emb``; per-head q/k norms
before it (through ``transpose(1, 2)`` or not) make it ``qk_norm_rotary_pos_emb``, and
vLLM's per-head norms before ``rotary_embedding`` make it ``qk_norm_rope``. Both are
bit-identical to the unfused graph (the ops' natives are those expressions).

Norm/activation -> quant (``quant_fusion``): the quantisation of an ``rms_norm``,
``fused_add_rms_norm``, ``all_reduce_rms_norm`` or ``silu_and_mul`` output becomes
the fused quant op (``rms_norm_dynamic_quant``, ...); these rules come last, so
``add -> rms_norm -> quant`` ends as ``fused_add_rms_norm_quant``.

Each rule returns a reason when it recognises its pattern but must not fuse,
and ``add_rms_norm`` says why a norm has no residual add to fuse with: the
compile report prints these next to the module the norm came from.
"""

from __future__ import annotations

import typing

import torch
from torch import fx

import opir.compiler.activation_fusion as act
import opir.compiler.quant_fusion as quant
import opir.compiler.rotary_fusion as rot
from opir.compiler.fusion import Fused, Rule
from opir.compiler.fx_utils import val
from opir.distributed.collectives import all_reduce
from opir.ops import (
    all_reduce_rms_norm,
    fused_add_rms_norm,
    rms_norm,
    rotary_embedding,
    rotary_pos_emb,
)

aten = torch.ops.aten
ALL_REDUCE = all_reduce._opoverload  # the op object itself: no lookup by name
_CASTS = (torch.ops.prims.convert_element_type.default, aten._to_copy.default)


def _no_add_reason(h: object) -> str:
    """Why the norm's input is not a residual add it could fuse with."""
    if not isinstance(h, fx.Node):
        return "input is a constant"
    if h.op == "placeholder":
        return "no residual add: the input is a graph input"
    if h.target in (aten.embedding.default, torch.nn.functional.embedding):
        return "no residual add: the input comes from the embedding"
    if h.target in _CASTS:
        inner = h.args[0]
        if isinstance(inner, fx.Node) and inner.target is aten.add.Tensor:
            return "a dtype cast sits between the residual add and the norm"
    name = getattr(h.target, "__name__", str(h.target))
    return f"no residual add: the input comes from {name}"


def residual_add(h: object) -> tuple[fx.Node, fx.Node] | str:
    """(x, residual) if ``h`` is ``x + residual`` of equal dtype/shape tensors, else why not."""
    if not isinstance(h, fx.Node) or h.op != "call_function" or h.target is not aten.add.Tensor:
        return _no_add_reason(h)
    if h.kwargs.get("alpha", 1) != 1 or len(h.args) != 2:
        return "the add is not a plain x + residual (alpha != 1)"
    if not all(isinstance(a, fx.Node) for a in h.args):
        return "the add has a scalar operand, not a residual"
    x, residual = h.args
    vx, vr, vh = val(x), val(residual), val(h)
    if not all(isinstance(v, torch.Tensor) for v in (vx, vr, vh)):
        return "the add's operands are not tensors"
    if not vh.dtype.is_floating_point or not (vx.dtype == vr.dtype == vh.dtype):
        return f"the add mixes dtypes ({vx.dtype} + {vr.dtype}: type promotion)"
    if not (vx.shape == vr.shape == vh.shape):
        return "the add broadcasts (a bias, not a residual)"
    return typing.cast(fx.Node, x), typing.cast(fx.Node, residual)  # checked above


def _add_rms_norm(node: fx.Node, args: tuple) -> Fused | str:
    h, weight, epsilon, variance_size, weight_bias, fp32_multiply = args
    operands = residual_add(h)
    if isinstance(operands, str):
        return operands
    x, residual = operands
    return Fused(
        fused_add_rms_norm,
        (x, residual, weight, epsilon, variance_size, weight_bias, fp32_multiply),
        {0: node, 1: h},
        (val(node), val(h)),
        dead=(h,),
    )


def _reduced(node: object, single_use: bool) -> fx.Node | None:
    """x if node is ``all_reduce(x)`` (used only once when single_use)."""
    if not isinstance(node, fx.Node) or node.target is not ALL_REDUCE:
        return None
    if single_use and len(node.users) != 1:
        return None
    return typing.cast(fx.Node, node.args[0])  # all_reduce's tensor


def _gemma_raw_weight(weight: object) -> fx.Node | None:
    """w if weight is ``w.float() + 1.0``."""
    if not (isinstance(weight, fx.Node) and weight.target is aten.add.Tensor):
        return None
    if len(weight.args) != 2 or weight.args[1] != 1 or weight.kwargs.get("alpha", 1) != 1:
        return None
    cast = weight.args[0]
    if isinstance(cast, fx.Node) and cast.target in _CASTS and val(cast).dtype == torch.float32:
        return typing.cast(fx.Node, cast.args[0])  # the cast's tensor
    return None


def _all_reduce_norm(
    node: fx.Node, x: fx.Node, residual, weight, epsilon, variance_size, bias,
    outputs: dict[int, fx.Node], dead: tuple[fx.Node, ...],
) -> Fused | str:  # fmt: skip
    dtype = val(x).dtype
    if weight is not None and bias == 0.0 and (raw := _gemma_raw_weight(weight)) is not None:
        weight, bias = raw, 1.0
    if weight is not None and val(weight).dtype != dtype:
        return f"dtype guard: weight is {val(weight).dtype}, x is {dtype}"
    anchor_val = val(node)
    out_val = anchor_val[0] if isinstance(anchor_val, tuple) else anchor_val
    return Fused(
        all_reduce_rms_norm,
        (x, residual, weight, epsilon, variance_size, bias),
        outputs,
        (out_val, val(x)),
        dead,
    )


def _all_reduce_add_rms_norm(node: fx.Node, args: tuple) -> Fused | str | None:
    h, weight, epsilon, variance_size, bias, fp32_multiply = args
    if fp32_multiply:  # all_reduce_rms_norm has no fp32_multiply: leave it to add_rms_norm
        return None
    operands = residual_add(h)
    if isinstance(operands, str):
        return None
    for reduced, residual in (operands, operands[::-1]):
        x = _reduced(reduced, single_use=True)
        if x is not None:
            return _all_reduce_norm(
                node, x, residual, weight, epsilon, variance_size, bias,
                {0: node, 1: h}, (h, reduced),
            )  # fmt: skip
    return None


def _all_reduce_fused_add_rms_norm(node: fx.Node, args: tuple) -> Fused | str | None:
    reduced, residual, weight, epsilon, variance_size, bias, fp32_multiply = args
    if fp32_multiply:  # all_reduce_rms_norm has no fp32_multiply
        return None
    x = _reduced(reduced, single_use=True)
    if x is None:
        return None
    outputs = {typing.cast(int, user.args[1]): user for user in node.users}  # getitem indices
    return _all_reduce_norm(
        node, x, residual, weight, epsilon, variance_size, bias, outputs, (node, reduced)
    )


def _all_reduce_rms_norm(node: fx.Node, args: tuple) -> Fused | str | None:
    reduced, weight, epsilon, variance_size, bias, fp32_multiply = args
    if fp32_multiply:  # all_reduce_rms_norm has no fp32_multiply
        return None
    x = _reduced(reduced, single_use=False)
    if x is None:
        return None
    return _all_reduce_norm(
        node, x, None, weight, epsilon, variance_size, bias, {0: node, 1: reduced}, (reduced,)
    )


# Priority order: a rule whose pattern contains another rule's pattern comes first.
BASE_RULES: tuple[Rule, ...] = (
    # q/k norms + RoPE (see ``rotary_fusion``): they contain per-head rms_norm nodes,
    # so they come before the norm rules; the Hugging Face form on an opir
    # rotary_pos_emb node and on transformers' expression, then vLLM's form.
    Rule("qk_norm_rotary_pos_emb", rotary_pos_emb, rot.match_qk_norm_op),
    Rule("qk_norm_rotary_pos_emb", rot.ADD, rot.match_qk_norm_expression),
    Rule("qk_norm_rope", rotary_embedding, rot.match_qk_norm_rope),
    Rule("all_reduce_add_rms_norm", rms_norm, _all_reduce_add_rms_norm),
    Rule("all_reduce_fused_add_rms_norm", fused_add_rms_norm, _all_reduce_fused_add_rms_norm),
    Rule("add_rms_norm", rms_norm, _add_rms_norm),
    Rule("all_reduce_rms_norm", rms_norm, _all_reduce_rms_norm),
    # Hugging Face's RoPE expression alone (no q/k norms before it)
    Rule("rotary_pos_emb", rot.ADD, rot.match_rotary),
    # Gated-MLP activations, ``act(a) * b`` (see ``activation_fusion``): one entry per
    # activation, anchored on the product; then activations nothing multiplies,
    # reported as "not a product" (these never fuse).
    Rule("silu_mul", act.MUL, act.match_silu),
    Rule("gelu_mul", act.MUL, act.match_gelu),
    Rule("gelu_tanh_mul", act.MUL, act.match_gelu_tanh),
    *(Rule("activation_not_a_product", anchor, act.not_a_product) for anchor in act.REPORT_ANCHORS),
)


def rules(gate: quant.Gate | None = None) -> tuple[Rule, ...]:
    """The whole table; the norm/activation -> quant rules come last, so they see (and
    grow) the fused norms and activations the rules before them made, and ``gate``
    (the platform's ``fuse_quant`` policy) may veto them."""
    return (*BASE_RULES, *quant.rules(gate))


RULES: tuple[Rule, ...] = rules()
"""Every rule, the quant ones ungated (``fuse_quant="always"``)."""
