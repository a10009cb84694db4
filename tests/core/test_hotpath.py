"""The generated fast path: any parameter name works, scopes stay fast, failures leave no trace."""

from __future__ import annotations

import inspect

import pytest
import torch

import opir
from opir import RegistrationError

# Names the generated code itself uses (locals, globals, builtins) and a few soft keywords.
TRICKY = ["fn", "pred", "self", "type", "scope", "entries", "_scope_get", "_PLAIN", "match", "_"]


def _make(name: str):
    """An op `x * p + 1` whose float parameter is called ``name``."""

    def native(x: torch.Tensor, p: float) -> torch.Tensor:
        return x * p + 1

    params = [
        inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=float),
    ]
    native.__signature__ = inspect.Signature(params, return_annotation=torch.Tensor)
    return native


@pytest.mark.parametrize("name", TRICKY)
def test_any_identifier_is_a_valid_parameter_name(make_op, name):
    op = make_op(_make(name))
    x = torch.arange(4.0)
    expected = x * 3.0 + 1
    torch.testing.assert_close(op(x, 3.0), expected, rtol=0, atol=0)
    torch.testing.assert_close(op(x, **{name: 3.0}), expected, rtol=0, atol=0)

    def twice(x: torch.Tensor, p: float) -> torch.Tensor:
        return x * p + 1

    twice.__signature__ = inspect.signature(op.native)
    ran = []

    def pred(*args):
        ran.append(args[1])
        return True

    pred.__signature__ = inspect.signature(op.native)
    op.register_impl("alt", supports_args=pred)(twice)
    with op.set_priority(["alt"]):  # scoped priority on the fast path
        torch.testing.assert_close(op(x, 3.0), expected, rtol=0, atol=0)
    assert ran == [3.0]
    with opir.trace() as t:  # the selecting path
        op(x, 2.0)
    assert t.providers() == ["native"]


@pytest.mark.parametrize("bad", ["lambda", "yield", "async", "class"])
def test_keyword_parameter_names_are_rejected_before_registering(bad):
    def native(x: torch.Tensor, p: float) -> torch.Tensor:
        return x * p

    params = list(inspect.signature(native).parameters.values())
    # inspect.Parameter refuses keywords, so smuggle one in the way a code generator might.
    fake_param = params[1].replace(name="p")
    object.__setattr__(fake_param, "_name", bad)
    native.__signature__ = inspect.Signature([params[0], fake_param])
    name = f"kw_param_{bad}"
    with pytest.raises(RegistrationError, match="keyword"):
        opir.register_op(name=name)(native)
    assert name not in opir.registry
    assert not hasattr(torch.ops.opir, name)
    ok = opir.register_op(name=name)(lambda_free)  # the name is still free
    ok.drop()


def lambda_free(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def test_op_named_like_a_keyword_is_refused_cleanly():
    with pytest.raises(RegistrationError, match="invalid op name 'def': it is a Python keyword"):
        opir.register_op(name="def")(lambda_free)
    assert "def" not in opir.registry
    op = opir.register_op(name="lambda_free_again")(lambda_free)  # registry still usable
    op.drop()


def test_op_named_like_a_python_soft_keyword_works():
    op = opir.register_op(name="match")(lambda_free)
    try:
        torch.testing.assert_close(op(torch.zeros(2)), torch.ones(2))
        with pytest.raises(TypeError, match=r"match\(\) missing"):
            op()
    finally:
        op.drop()


def test_scoped_priority_for_another_op_keeps_the_process_default(make_op):
    a = make_op(lambda_free, name="hot_a")
    b = make_op(lambda_free, name="hot_b")
    calls = []

    @a.register_impl("counting")
    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append("a")
        return x + 1

    a.set_default(["counting"])
    with b.set_priority(["native"]):
        a(torch.zeros(1))
    assert calls == ["a"]


def test_scoped_priority_applies_to_maybe_inplace(add_scale_op):
    seen = []

    def inplace_impl(x: torch.Tensor, x_other: torch.Tensor, alpha: float = 2.0):
        seen.append("inplace")
        x.add_(x_other)
        return x, x * alpha

    inplace_impl.__annotations__ = dict(add_scale_op.native.__annotations__)
    add_scale_op.register_impl("inp", inplace=True)(inplace_impl)
    x, other = torch.ones(3), torch.ones(3)
    with add_scale_op.set_priority(["inp"]):
        s, _ = add_scale_op.maybe_inplace(x, other)
        assert s.data_ptr() == x.data_ptr()  # donated: written in place
        s2, _ = add_scale_op(torch.ones(3), other)  # functional: on clones
    assert seen == ["inplace", "inplace"]
    torch.testing.assert_close(s2, torch.full((3,), 2.0))
