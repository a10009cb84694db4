"""The add + rms_norm fusion on ATen graphs: where it fires and where it must not."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from opir.compiler.fusion import fuse
from opir.compiler.fusion_rules import RULES
from opir.compiler.fx_utils import opir_nodes
from opir.ops import rms_norm


def _fused(fn, *args):
    """(number of fusions, ops left, graph module) after fusing fn's ATen graph."""
    gm = make_fx(fn, tracing_mode="fake")(*args)
    fired = fuse(gm.graph, RULES).fired.get("add_rms_norm", 0)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return fired, [op.name for _, op, _ in opir_nodes(gm.graph)], gm


def _run(gm, fn, *args, dtype=torch.float32):
    tol = rms_norm.tolerance(dtype)
    torch.testing.assert_close(gm(*args), fn(*args), atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 0.1])
def test_fires_for_any_epsilon_and_keeps_it(eps):
    def decoder(x, r, w):
        h = x + r
        return rms_norm(h, w, eps), h * 2  # h is used again (the next residual)

    args = (torch.randn(4, 16), torch.randn(4, 16), torch.rand(16) + 0.5)
    fired, left, gm = _fused(decoder, *args)
    assert (fired, left) == (1, ["fused_add_rms_norm"])
    (node,) = [n for n, _, _ in opir_nodes(gm.graph)]
    assert node.args[3] == eps
    _run(gm, decoder, *args)


def test_variance_size_and_gemma_weight_carry_over():
    def gemma(x, r, w):
        return rms_norm(x + r, w.float() + 1.0, 1e-6, 8)

    args = (
        torch.randn(4, 16).bfloat16(),
        torch.randn(4, 16).bfloat16(),
        torch.randn(16).bfloat16(),
    )
    fired, _, gm = _fused(gemma, *args)
    assert fired == 1
    (node,) = [n for n, _, _ in opir_nodes(gm.graph)]
    assert node.args[4] == 8
    _run(gm, gemma, *args, dtype=torch.bfloat16)


def test_fp32_multiply_carries_over():
    def olmo(x, r, w):
        return rms_norm(x + r, w, 1e-6, None, 0.0, True)

    x, r, w = torch.randn(4, 16).bfloat16(), torch.randn(4, 16).bfloat16(), torch.randn(16)
    args = (x, r, w.bfloat16())
    fired, _, gm = _fused(olmo, *args)
    assert fired == 1
    (node,) = [n for n, _, _ in opir_nodes(gm.graph)]
    assert tuple(node.args[4:]) == (None, 0.0, True)


def _bias(x, r, w):
    return rms_norm(x + r[0], w, 1e-6)  # broadcast: not a residual add


def _promote(x, r, w):
    return rms_norm(x + r.float(), w, 1e-6)  # bf16 + fp32 promotes


def _alpha(x, r, w):
    return rms_norm(torch.add(x, r, alpha=2), w, 1e-6)


def _scalar(x, r, w):
    return rms_norm(x + 1.0, w, 1e-6)


def _sub(x, r, w):
    return rms_norm(x - r, w, 1e-6)


def _cast_between(x, r, w):
    return rms_norm((x + r).float(), w.float(), 1e-6)  # the norm reads a cast, not the sum


@pytest.mark.parametrize("fn", [_bias, _promote, _alpha, _scalar, _sub, _cast_between])
def test_does_not_fire_on_non_equivalent_graphs(fn):
    args = (torch.randn(4, 16).bfloat16(), torch.randn(4, 16).bfloat16(), torch.ones(16).bfloat16())
    fired, left, _ = _fused(fn, *args)
    assert fired == 0 and left == ["rms_norm"]


def test_a_rule_sees_only_nodes_of_its_anchor_and_adding_one_is_one_entry():
    from opir.compiler.fusion import Fused, Rule
    from opir.compiler.fx_utils import val
    from opir.ops import fused_add_rms_norm

    seen = []

    def double_norm(node, args):  # rms_norm(rms_norm(x)) -> rms_norm(x) (toy, for the test)
        seen.append(node.target)
        inner = args[0]
        if getattr(inner, "target", None) is not rms_norm.torch_op:
            return "input is not a norm"
        return Fused(rms_norm, tuple(inner.args), {0: node}, (val(node),), dead=(inner,))

    def fn(x, r, w):
        return rms_norm(rms_norm(x, w, 1e-6), w, 1e-6), fused_add_rms_norm(x, r, w, 1e-6)[0]

    args = (torch.randn(4, 16), torch.randn(4, 16), torch.rand(16) + 0.5)
    gm = make_fx(fn, tracing_mode="fake")(*args)
    result = fuse(gm.graph, [Rule("double_norm", rms_norm, double_norm), *RULES])
    assert set(seen) == {rms_norm.torch_op}
    assert result.fired == {"double_norm": 1}


def test_residual_used_before_the_weight_exists_keeps_the_graph_valid():
    def fn(x, r, w):
        h = x + r
        early = h * 3  # a use of h ordered before the norm's weight is computed
        return rms_norm(h, w.float() + 1.0, 1e-6), early

    args = (torch.randn(4, 16), torch.randn(4, 16), torch.rand(16))
    gm = make_fx(fn, tracing_mode="fake")(*args)
    result = fuse(gm.graph, RULES)
    gm.graph.lint()
    gm.recompile()
    _run(gm, fn, *args)
    assert result.fired == {}  # declined rather than computing the sum twice
    (unfused,) = result.unfused
    assert "before the fused op's inputs exist" in unfused.reason


def test_unfused_norms_say_why():
    def fn(x, r, w):
        return rms_norm(x, w, 1e-6), rms_norm(x + r[0], w, 1e-6)

    args = (torch.randn(4, 16), torch.randn(4, 16), torch.rand(16))
    gm = make_fx(fn, tracing_mode="fake")(*args)
    reasons = sorted(u.reason for u in fuse(gm.graph, RULES).unfused)
    assert reasons == [
        "no residual add: the input is a graph input",
        "the add broadcasts (a bias, not a residual)",
    ]
