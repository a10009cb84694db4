"""Priority scopes written inside compiled code: they work under fullgraph=True
and pin the op calls they contain when the graph is lowered."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.core.errors import PriorityError

pytestmark = pytest.mark.slow


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _adding(i: int):
    def impl(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + i

    return impl


@pytest.fixture
def op(make_op):
    op = make_op(_double)
    for i in (1, 2):
        op.register_impl(f"p{i}")(_adding(i))
    return op


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend=opir.backend(inductor=False), fullgraph=True)


def test_a_scope_inside_fullgraph_code_pins_the_calls_it_contains(op):
    """Expected: works and lowers the calls inside with the scope's priority.
    Actual: Dynamo could not trace ContextVar.get; fullgraph=True failed."""

    def fn(x):
        with op.set_priority(["p1"]):
            a = op(x)
            with opir.priority({op.name: ["p2"]}):  # nested: the inner one wins
                b = op(x)
        return a, b, op(x)

    x = torch.zeros(3)
    a, b, c = _compiled(fn)(x)
    torch.testing.assert_close((a, b, c), (x + 1, x + 2, x * 2))
    with op.set_priority(["p2"]):  # a runtime scope around the call: only the third
        a, b, c = _compiled(fn)(x)
    torch.testing.assert_close((a, b, c), (x + 1, x + 2, x + 2))


def test_a_typo_in_a_scope_inside_compiled_code_is_a_clear_error(op):
    def fn(x):
        with op.set_priority(["p1", "nope"]):
            return op(x)

    with pytest.raises(Exception, match=r"unknown provider.*nope") as info:
        _compiled(fn)(torch.zeros(3))
    assert isinstance(info.value, PriorityError) or "PriorityError" in str(info.value)

    def fn2(x):
        with opir.priority({"no_such_op": ["native"]}):
            return op(x)

    with pytest.raises(Exception, match="unknown op 'no_such_op'"):
        _compiled(fn2)(torch.zeros(3))


def _add_norm(x, r, w):
    h = x + r  # fusion turns this and the rms_norm into fused_add_rms_norm
    return opir.ops.rms_norm(h, w, 1e-6), h


def _compile_add_norm(options):
    torch._dynamo.reset()
    compiled = opir.compile(_add_norm, options={"inductor": False, **options}, fullgraph=True)
    x, r, w = torch.randn(3, 8), torch.randn(3, 8), torch.randn(8)
    with torch.no_grad():
        compiled(x, r, w)
    (graph,) = compiled.opir_report.graphs
    assert graph.fusions == {"add_rms_norm": 1}
    (entry,) = graph.lowered
    assert entry.op == "fused_add_rms_norm"
    return entry, str(compiled.opir_report)


def test_a_pin_on_an_op_fusion_replaced_carries_over_to_the_fused_op():
    """Expected: pinning rms_norm to cpu pins the norm fusion made of it too, and the
    report says so. Actual: the fused norm ran on native, with no word in the report."""
    entry, text = _compile_add_norm({"priority": {"rms_norm": ["cpu"]}})
    assert entry.provider == "cpu"
    assert "carried over from rms_norm's pin ['cpu']" in text


def test_an_in_graph_pin_carries_over_to_the_fused_op():
    def fn(x, r, w):
        with opir.ops.rms_norm.set_priority(["cpu"]):
            return _add_norm(x, r, w)

    torch._dynamo.reset()
    compiled = opir.compile(fn, options={"inductor": False}, fullgraph=True)
    with torch.no_grad():
        compiled(torch.randn(3, 8), torch.randn(3, 8), torch.randn(8))
    assert compiled.opir_report.providers() == [("fused_add_rms_norm", "cpu")]


def test_a_pin_the_fused_op_cannot_honour_is_reported():
    rms_norm = opir.ops.rms_norm
    rms_norm.register_impl("only_plain")(rms_norm.native)
    try:
        entry, text = _compile_add_norm({"priority": {"rms_norm": ["only_plain"]}})
    finally:
        rms_norm.unregister_impl("only_plain")
    assert entry.provider != "only_plain"
    assert "pin ['only_plain'] not carried over" in text
