"""Gated-MLP activation fusion: ``act(a) * b`` -> the opir op, and why it does not fire."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import opir
from opir.compiler.fusion import fuse
from opir.compiler.fusion_rules import RULES
from opir.compiler.fx_utils import opir_nodes
from opir.ops import activations as acts


def _decomposed():
    from torch._inductor.decomposition import select_decomp_table

    return select_decomp_table()


def _fused(fn, *args, decompose=False):
    """(fired rules, opir ops left, unfused reasons, graph module) after fusing fn's graph."""
    table = _decomposed() if decompose else None
    gm = make_fx(fn, decomposition_table=table, tracing_mode="fake")(*args)
    result = fuse(gm.graph, RULES)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    left = [op.name for _, op, _ in opir_nodes(gm.graph)]
    return result.fired, left, [u.reason for u in result.unfused], gm


def _separate_silu(a, b):
    return F.silu(a) * b


def _separate_gelu(a, b):
    return b * F.gelu(a)  # the activation on the right operand


def _separate_gelu_tanh(a, b):
    return F.gelu(a, approximate="tanh") * b


def _chunk_silu(a, b):
    gate, up = torch.cat([a, b], -1).chunk(2, dim=-1)
    return F.silu(gate) * up


def _slice_gelu(a, b):
    t = torch.cat([a, b], -1)
    d = t.shape[-1] // 2
    return F.gelu(t[..., :d]) * t[..., d:]


def _swapped_silu(a, b):
    up, gate = torch.cat([b, a], -1).chunk(2, dim=-1)
    return up * F.silu(gate)


CASES = [
    (_separate_silu, "silu_mul", "silu_mul"),
    (_separate_gelu, "gelu_mul", "gelu_mul"),
    (_separate_gelu_tanh, "gelu_tanh_mul", "gelu_mul"),
    (_chunk_silu, "silu_mul", "silu_and_mul"),
    (_slice_gelu, "gelu_mul", "gelu_and_mul"),
    (_swapped_silu, "silu_mul", "mul_and_silu"),
]


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "inductor_decomposed"])
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize(("fn", "rule", "op"), CASES, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fires_and_equals_the_opir_composition(fn, rule, op, shape, decompose, dtype):
    g = torch.Generator().manual_seed(0)
    a, b = (3 * torch.randn(*shape, generator=g)).to(dtype), torch.randn(*shape).to(dtype)
    fired, left, reasons, gm = _fused(fn, a, b, decompose=decompose)
    assert (fired, left, reasons) == ({rule: 1}, [op], [])
    with getattr(acts, op).set_priority(["native"]):  # the fused graph's own numerics
        got = gm(a, b)
    # Exactly the op's native (the contract), within tolerance of torch's own activation.
    assert torch.equal(got, getattr(acts, op).native(*_op_args(fn, op, a, b)))
    tol = getattr(acts, op).tolerance(dtype)
    torch.testing.assert_close(got, fn(a, b), atol=tol.atol, rtol=tol.rtol)


def _op_args(fn, op, a, b):
    if op in ("silu_mul", "gelu_mul"):
        extra = ("tanh",) if fn is _separate_gelu_tanh else ("none",) if op == "gelu_mul" else ()
        return (a, b, *extra)
    if op == "mul_and_silu":
        return (torch.cat([b, a], -1),)
    return (torch.cat([a, b], -1), *(("none",) if op == "gelu_and_mul" else ()))


def _promoted(a, b):
    return F.silu(a) * b.float()


def _broadcast(a, b):
    return F.silu(a) * b[0]


def _scaled(a, b):
    return F.gelu(a) * 2.0


def _ungated(a, b):
    return F.gelu(a, approximate="tanh") + b


def _shared(a, b):
    s = F.silu(a)
    return s * b, s + 1


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "inductor_decomposed"])
@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (_promoted, "dtype mismatch"),
        (_broadcast, "broadcasts"),
        (_scaled, "multiplied by a constant"),
        (_ungated, "not a product"),
        (_shared, "is used elsewhere"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_left_unfused_with_a_reason(fn, reason, decompose):
    a, b = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    fired, left, reasons, gm = _fused(fn, a, b, decompose=decompose)
    assert fired == {} and left == []
    assert len(reasons) == 1 and reason in reasons[0], reasons
    torch.testing.assert_close(gm(a, b), fn(a, b), atol=0, rtol=0)


class GatedMLPs(nn.Module):
    """Llama's SwiGLU on two linears, Phi-3's merged gate_up_proj, Gemma's GELU-tanh."""

    def __init__(self, hidden: int = 16, inter: int = 24) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activations(x))

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        llama = F.silu(self.gate_proj(x)) * self.up_proj(x)
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        phi3 = F.silu(gate) * up
        gemma = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
        return llama + phi3 + gemma

    def opir_native(self, x: torch.Tensor) -> torch.Tensor:
        """What the fused graph computes: the opir ops' native functions."""
        gate, up = self.gate_proj(x), self.up_proj(x)
        llama = acts.silu_mul.native(gate, up)
        phi3 = acts.silu_and_mul.native(self.gate_up_proj(x))
        gemma = acts.gelu_mul.native(gate, up, "tanh")
        return self.down_proj(llama + phi3 + gemma)


@pytest.mark.slow
@pytest.mark.parametrize("inductor", [False, True], ids=["aot", "inductor"])
def test_compiled_mlps_fuse_and_match(inductor):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GatedMLPs().bfloat16().eval()
    x = torch.randn(2, 5, 16).bfloat16()
    compiled = opir.compile(model, options={"inductor": inductor})
    with torch.no_grad():
        got = compiled(x)
        expected = model(x)
    report = compiled.opir_report.last
    assert report.fusions == {"silu_mul": 2, "gelu_tanh_mul": 1}
    assert sorted(e.op for e in report.lowered) == ["gelu_mul", "silu_and_mul", "silu_mul"]
    assert report.unfused == []
    with torch.no_grad():
        native = model.opir_native(x)
    if not inductor:  # the same ATen ops around the fused ones: bit for bit
        assert torch.equal(got, native)
    # Stock eager rounds the activation its own way (and Inductor fuses the adds in
    # fp32): within a few bf16 ulps after the down projection.
    tol = acts.silu_mul.tolerance(torch.bfloat16)
    torch.testing.assert_close(got, expected, atol=4 * tol.atol, rtol=4 * tol.rtol)
    torch.testing.assert_close(got, native, atol=4 * tol.atol, rtol=4 * tol.rtol)
