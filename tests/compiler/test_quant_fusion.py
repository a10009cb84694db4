"""Norm/activation -> quant fusion: each rule fires on a tiny quantised block with a
result bit-identical to the unfused natives, and says why when it must not fire."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import opir
from opir.compiler.fusion import fuse
from opir.compiler.fusion_rules import RULES, rules
from opir.compiler.fx_utils import opir_nodes
from opir.compiler.options import Options
from opir.layers import QuantLinear, RMSNorm
from opir.ops import (
    dynamic_group_quant,
    dynamic_quant,
    fused_add_rms_norm,
    rms_norm,
    silu_and_mul,
    static_quant,
)

BF16, I8 = torch.bfloat16, torch.int8
OPS = (
    "rms_norm", "fused_add_rms_norm", "silu_and_mul", "static_quant", "dynamic_quant",
    "dynamic_group_quant", "rms_norm_quant", "rms_norm_dynamic_quant", "rms_norm_group_quant",
    "fused_add_rms_norm_quant", "fused_add_rms_norm_dynamic_quant", "silu_and_mul_quant",
    "silu_and_mul_dynamic_quant",
)  # fmt: skip


def native():
    return opir.priority({name: ["native"] for name in OPS})


def _fuse(fn, *args, table=RULES):
    gm = make_fx(fn, tracing_mode="fake")(*args)
    result = fuse(gm.graph, table)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return result, [op.name for _, op, _ in opir_nodes(gm.graph)], gm


def _same(got, want):
    leaves = torch.utils._pytree.tree_leaves
    for g, w in zip(leaves(got), leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)


def _norm_static(x, r, w, s):
    return static_quant(rms_norm(x, w, 1e-6), s, I8)


def _norm_dynamic(x, r, w, s):
    return dynamic_quant(rms_norm(x, w, 1e-6), I8)


def _norm_group(x, r, w, s):
    return dynamic_group_quant(rms_norm(x, w, 1e-6), I8, 64)


def _add_norm_static(x, r, w, s):
    y, h = fused_add_rms_norm(x, r, w, 1e-6)
    return static_quant(y, s, I8), h


def _add_norm_dynamic(x, r, w, s):
    y, h = fused_add_rms_norm(x, r, w, 1e-6)
    return *dynamic_quant(y, I8), h


def _act_static(x, r, w, s):
    return static_quant(silu_and_mul(x), s, I8)


def _act_dynamic(x, r, w, s):
    return dynamic_quant(silu_and_mul(x), I8)


@pytest.mark.parametrize(
    ("fn", "made"),
    [
        (_norm_static, "rms_norm_quant"),
        (_norm_dynamic, "rms_norm_dynamic_quant"),
        (_norm_group, "rms_norm_group_quant"),
        (_add_norm_static, "fused_add_rms_norm_quant"),
        (_add_norm_dynamic, "fused_add_rms_norm_dynamic_quant"),
        (_act_static, "silu_and_mul_quant"),
        (_act_dynamic, "silu_and_mul_dynamic_quant"),
    ],
)
def test_each_rule_fires_and_is_bit_identical(fn, made):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(3, 128, generator=g).to(BF16) for _ in range(2))
    w = (torch.rand(128, generator=g) + 0.5).to(BF16)
    s = torch.tensor([0.02])
    result, left, gm = _fuse(fn, x, r, w, s)
    assert result.fired == {made: 1} and left == [made]
    with native():
        _same(gm(x, r, w, s), fn(x, r, w, s))


def test_add_then_norm_then_quant_ends_as_one_op():
    def hf(x, r, w, s):  # Hugging Face style: the add is an aten add
        h = x + r
        return *dynamic_quant(rms_norm(h, w, 1e-6), I8), h

    x, r, w = torch.randn(3, 64).to(BF16), torch.randn(3, 64).to(BF16), torch.ones(64, dtype=BF16)
    result, left, gm = _fuse(hf, x, r, w, None)
    assert result.fired == {"add_rms_norm": 1, "fused_add_rms_norm_dynamic_quant": 1}
    assert left == ["fused_add_rms_norm_dynamic_quant"]
    with native():  # bit-identical to the add+norm fusion followed by the quant
        y, h = fused_add_rms_norm(x, r, w, 1e-6)
        _same(gm(x, r, w, None), (*dynamic_quant(y, I8), h))


def _other_user(x, r, w, s):
    y = rms_norm(x, w, 1e-6)
    return dynamic_quant(y, I8), y * 2


def _cast(x, r, w, s):
    return dynamic_quant(rms_norm(x, w, 1e-6).float(), I8)


def _view(x, r, w, s):
    return dynamic_quant(rms_norm(x, w, 1e-6).view(-1, 2, 32), I8)


def _per_tensor(x, r, w, s):
    return dynamic_quant(rms_norm(x, w, 1e-6), I8, False)


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (_other_user, "is also used by"),
        (_cast, "a dtype cast sits between rms_norm and the quant"),
        (_view, "a view/reshape sits between rms_norm and the quant"),
        (_per_tensor, "per-tensor dynamic_quant: no fused op"),
    ],
)
def test_does_not_fire_and_says_why(fn, reason):
    x, w = torch.randn(3, 64).to(BF16), torch.ones(64, dtype=BF16)
    result, left, _ = _fuse(fn, x, x, w, None)
    assert result.fired == {} and "rms_norm" in left
    (quant,) = [u for u in result.unfused if u.op == "dynamic_quant"]
    assert reason in quant.reason


def test_the_gate_vetoes_with_its_reason():
    from opir.compiler.passes import OpirPasses
    from opir.compiler.report import GraphReport

    passes = OpirPasses(Options(fuse_quant="kernel"), {}, GraphReport())
    x, w = torch.randn(3, 64).to(BF16), torch.ones(64, dtype=BF16)
    with opir.priority({"rms_norm_dynamic_quant": ["native"]}):
        result, left, _ = _fuse(_norm_dynamic, x, x, w, None, table=rules(passes.quant_gate))
    assert result.fired == {} and left == ["rms_norm", "dynamic_quant"]
    (quant,) = [u for u in result.unfused if u.op == "dynamic_quant"]
    assert "would lower to 'native', not a hand-written kernel" in quant.reason
    with pytest.raises(ValueError, match="fuse_quant must be one of"):
        Options(fuse_quant="sometimes")


class QuantBlock(nn.Module):
    """A W8A8 decoder block as opir's layers write it: norm -> merged qkv, add+norm ->
    merged gate_up -> SwiGLU -> down."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(hidden, dtype=BF16), RMSNorm(hidden, dtype=BF16)

        def q(i, o):
            return QuantLinear.from_linear(nn.Linear(i, o, bias=False, dtype=BF16), I8)

        self.qkv, self.o = q(hidden, 3 * hidden), q(3 * hidden, hidden)
        self.gate_up, self.down = q(hidden, 4 * hidden), q(2 * hidden, hidden)

    def forward(self, x):
        y = self.norm1(x)
        h = self.o(self.qkv(y)) + x
        y = self.norm2(h)
        gate, up = self.gate_up(y).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up) + h


def test_opir_compile_of_a_quantised_block():
    torch.manual_seed(0)
    block = QuantBlock()
    x = torch.randn(2, 3, 32, dtype=BF16)
    compiled = opir.compile(block, options={"inductor": False, "fuse_quant": "always"})
    with torch.inference_mode(), native():
        got = compiled(x)
        want = block(x)
    fusions = compiled.opir_report.last.fusions
    assert fusions == {
        "add_rms_norm": 1,
        "silu_mul": 1,
        "rms_norm_dynamic_quant": 1,
        "fused_add_rms_norm_dynamic_quant": 1,
        "silu_and_mul_dynamic_quant": 1,
    }
    # the HF-style add+norm and SwiGLU fusions are held to tolerance (their docs); the
    # quant fusions add no difference of their own (tested bit-exact above)
    torch.testing.assert_close(got, want, atol=0.25, rtol=0.05)


def test_all_reduce_add_norm_quant_ends_as_one_op():
    from opir.distributed.collectives import all_reduce
    from opir.ops import all_reduce_rms_norm

    def tp(x, r, w, s):  # world size one without a process group
        h = all_reduce(x) + r
        return static_quant(rms_norm(h, w, 1e-6), s, I8), h

    x, r = torch.randn(3, 64).to(BF16), torch.randn(3, 64).to(BF16)
    w, s = torch.rand(64).to(BF16) + 0.5, torch.tensor([0.02])
    result, left, gm = _fuse(tp, x, r, w, s)
    assert result.fired == {"all_reduce_add_rms_norm": 1, "all_reduce_rms_norm_quant": 1}
    assert left == ["all_reduce_rms_norm_quant"]
    with opir.priority(
        {"all_reduce_rms_norm_quant": ["native"], "all_reduce_rms_norm": ["native"]}
    ):
        y, h = all_reduce_rms_norm(x, r, w, 1e-6)
        _same(gm(x, r, w, s), (static_quant.native(y, s, I8), h))
