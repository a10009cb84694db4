"""Hostile-user tests: odd signatures, names and transforms against the fast path.

Each test with an "Expected ... Actual ..." docstring is the regression test of
a bug found by attacking opir from outside; "Actual" is what it did before
the fix.
"""

from __future__ import annotations

import pytest
import torch

import opir


def _list_input(x: torch.Tensor, ys: list[torch.Tensor]) -> torch.Tensor:
    return x + sum(ys)


def _list_output(x: torch.Tensor) -> list[torch.Tensor]:
    return [x * 2, x * 3]


def _with_priority_param(x: torch.Tensor, priority: float = 1.0) -> torch.Tensor:
    return x * priority


def _scale(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return x * alpha


def test_grad_through_a_tensor_list_parameter_is_refused(make_op):
    """op(x, [y]) with y requiring grad (grad mode on).

    Expected: like ``op.torch_op(x, [y])``: backward raises the op's
    "inference op and has no backward" error. Actual: the eager fast path
    runs the native kernel unguarded and ``backward()`` silently fills
    ``y.grad``: signature._tensor_kind only knows Tensor / Tensor | None, so
    hotpath.make_call emits no type or requires_grad check for list[Tensor].
    """
    op = make_op(_list_input)
    y = torch.ones(2, requires_grad=True)
    out = op(torch.ones(2), [y])
    with pytest.raises(RuntimeError, match="inference op"):
        out.sum().backward()
    assert y.grad is None


def test_grad_through_a_tensor_list_parameter_is_refused_inside_a_trace(make_op):
    """The full-selection path (tracing / strict scopes) checks list elements too."""
    op = make_op(_list_input)
    y = torch.ones(2, requires_grad=True)
    with opir.trace():
        out = op(torch.ones(2), [y])
    with pytest.raises(RuntimeError, match="inference op"):
        out.sum().backward()
    assert y.grad is None


def test_torch_op_refuses_grad_through_a_tensor_list_parameter(make_op):
    """The torch op path is right (the reference for the test above)."""
    op = make_op(_list_input)
    y = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference op"):
        op.torch_op(torch.ones(2), [y]).sum().backward()


def test_list_output_keeps_its_type_when_inputs_require_grad(make_op):
    """op(x) -> list[Tensor] with x requiring grad.

    Expected: a list, as without grad and as ``op.torch_op`` returns.
    Actual: a tuple (overloads._refuse_backward returns ``tuple(...)``).
    """
    op = make_op(_list_output)
    x = torch.ones(2, requires_grad=True)
    assert type(op(torch.ones(2))) is type(op.torch_op(x)) is list
    assert type(op(x)) is list


def test_dispatch_with_an_op_parameter_named_priority(make_op):
    """An op with a parameter ``priority`` (any valid identifier is allowed,
    hotpath renames its own names around them).

    Expected: ``op.dispatch(x, priority=3.0).provider == 'native'``, as
    ``op(x, priority=3.0)`` works. Actual: AttributeError "'float' object has
    no attribute 'dropped'": op.py Op.dispatch takes the argument as its own
    ``priority`` keyword.
    """
    op = make_op(_with_priority_param)
    assert op(torch.ones(1), priority=3.0).item() == 3.0
    assert op.dispatch(torch.ones(1), priority=3.0).provider == "native"


def test_torch_func_grad_gives_the_inference_op_error(make_op):
    """``torch.func.grad(lambda x: op(x).sum())(x)``.

    Expected: RuntimeError with the op's backward_error ("... is an inference
    op and has no backward ..."), as plain autograd gives. Actual: "In order
    to use an autograd.Function with functorch transforms (vmap, grad, jvp,
    jacrev, ...), it must override the setup_context staticmethod": the
    autograd registration in core/torch_library.py (register_autograd with
    _no_setup_context) does not work under functorch, and the message names
    neither opir nor the op.
    """
    op = make_op(_scale)
    with pytest.raises(RuntimeError, match="inference op"):
        torch.func.grad(lambda x: op(x).sum())(torch.ones(2))


def test_plain_autograd_gives_the_inference_op_error(make_op):
    op = make_op(_scale)
    out = op(torch.ones(2, requires_grad=True))
    with pytest.raises(RuntimeError, match="inference op"):
        out.sum().backward()


def test_an_int_for_a_float_parameter_gives_the_same_result_on_both_paths(make_op):
    """``op(x, 3)`` for ``alpha: float``.

    Decision: the eager fast path passes Python numbers as given (an int where
    the schema says float, as Python's typing allows); the torch op converts
    it. Coercing on the hot path would cost ~25 ns per float parameter per
    call, so impls must accept both (register_impl's docstring says so).
    What must hold: the same values on both paths.
    """
    op = make_op(_scale)
    seen = []

    @op.register_impl("spy")
    def spy(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        seen.append(alpha)
        return x * alpha

    op.set_default(["spy"])
    eager, through_torch = op(torch.ones(2), 3), op.torch_op(torch.ones(2), 3)
    assert seen == [3, 3.0]
    torch.testing.assert_close(eager, through_torch, rtol=0, atol=0)


def test_inductor_provider_compiles_once_for_an_int_or_a_float(make_op):
    """The inductor provider keys its compiled copies on the argument kind; an
    int given for a float parameter must not be a kind of its own. (Runs one
    tiny torch.compile.)"""
    from opir.providers import inductor

    op = make_op(_scale)
    with op.set_priority(["inductor"]):
        a, b = op(torch.ones(2), 3), op(torch.ones(2), 3.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, torch.full((2,), 3.0))
    assert len(inductor.compiled[op.name].compiled) == 1


@pytest.mark.parametrize("name", ["name", "_dir"])
def test_op_names_that_are_namespace_attributes(make_op, name):
    """register_op(name='name') (a valid name by check_name's regex).

    Expected: it registers, or a RegistrationError saying the name is
    reserved. Actual: "op 'name' is already registered
    (torch.ops.opir.name)", which is false: register.py:76 /
    torch_library.is_defined treats the _OpNamespace attribute as an op.
    """
    try:
        op = make_op(_scale, name=name)
    except opir.RegistrationError as e:
        assert "already registered" not in str(e)
        return
    torch.testing.assert_close(op(torch.ones(1)), torch.full((1,), 2.0))


@pytest.mark.parametrize("name", ["lambda", "yield", "async", "await", "nonlocal"])
def test_python_keywords_are_refused_as_op_and_provider_names(make_op, name):
    """Expected: a RegistrationError at registration. Actual: accepted and working
    eagerly, then opir.compile and torch.fx failed with an internal SyntaxError
    (fx names a node after its op)."""
    with pytest.raises(opir.RegistrationError, match="Python keyword"):
        make_op(_scale, name=name)
    assert name not in opir.registry
    op = make_op(_scale)
    with pytest.raises(opir.RegistrationError, match="Python keyword"):
        op.register_impl(name)(_scale)
    assert name not in op.impls
