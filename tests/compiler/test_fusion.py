"""The add + rms_norm fusion on ATen graphs: where it fires and where it must not."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from opir.compiler.fusion import fuse
from opir.compiler.fx_utils import opir_nodes
from opir.ops import rms_norm


def _fused(fn, *args):
    """(number of fusions, ops left, graph module) after fusing fn's ATen graph."""
    gm = make_fx(fn, tracing_mode="fake")(*args)
    fired = fuse(gm.graph).fired.get("add_rms_norm", 0)
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
