"""Tracers see exactly one opir node; fake tensors and opcheck work."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import opir
from opir.ops import fused_add_rms_norm, rms_norm


def _opir_nodes(graph: torch.fx.Graph) -> list[str]:
    return [
        str(node.target)
        for node in graph.nodes
        if node.op == "call_function" and str(node.target).startswith("opir.")
    ]


def _call_norms(x, residual, weight):
    out, res = fused_add_rms_norm(x, residual, weight, 1e-6)
    return rms_norm(out, weight, 1e-6) + res


@pytest.fixture
def inputs():
    x, residual, weight, _, _ = fused_add_rms_norm.sample_inputs(num_tokens=5, hidden_size=16)
    return x, residual, weight


EXPECTED = ["opir.fused_add_rms_norm.default", "opir.rms_norm.default"]


@pytest.mark.slow
def test_dynamo_graph_holds_one_node_per_op(inputs):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(_call_norms, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), _call_norms(*inputs))
    assert len(graphs) == 1 and _opir_nodes(graphs[0]) == EXPECTED


def test_make_fx_graph_holds_one_node_per_op(inputs):
    graph = make_fx(_call_norms)(*inputs).graph
    assert _opir_nodes(graph) == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True])
def test_export_program_holds_one_node_per_op(inputs, strict):
    class Model(torch.nn.Module):
        def forward(self, x, residual, weight):
            return _call_norms(x, residual, weight)

    program = torch.export.export(Model(), inputs, strict=strict)
    assert _opir_nodes(program.graph) == EXPECTED
    torch.testing.assert_close(program.module()(*inputs), _call_norms(*inputs))


def test_fake_tensor_mode_and_fake_inputs(inputs):
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in inputs]
        out, _ = fused_add_rms_norm(*fake[:2], fake[2], 1e-6)
        assert isinstance(out, FakeTensor) and out.shape == inputs[0].shape
        on_fake = rms_norm.dispatch(fake[0], fake[2], 1e-6).provider
    assert on_fake == rms_norm.dispatch(inputs[0], inputs[2], 1e-6).provider == "cpu"
    with opir.trace() as t:  # fake tensors outside their mode still take the torch op,
        out = rms_norm(fake[0], fake[2], 1e-6)  # whose fake kernel runs: no impl dispatch
    assert isinstance(out, FakeTensor) and out.shape == inputs[0].shape
    assert len(t) == 0


def test_functorch_functionalize_goes_through_the_torch_op(inputs):
    with opir.trace() as t:
        out = torch.func.functionalize(lambda x, w: rms_norm(x, w, 1e-6))(inputs[0], inputs[2])
    assert [r.path for r in t] == ["torch_op"]
    torch.testing.assert_close(out, rms_norm.native(inputs[0], inputs[2], 1e-6))


@pytest.mark.slow
def test_opcheck_default_overloads(inputs):
    x, residual, weight = inputs
    torch.library.opcheck(rms_norm.torch_op, (x, weight, 1e-6))
    torch.library.opcheck(rms_norm.torch_op, (x, None, 1e-6, 8))
    torch.library.opcheck(fused_add_rms_norm.torch_op, (x, residual, weight, 1e-6))
