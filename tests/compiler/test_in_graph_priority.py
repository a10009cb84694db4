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
