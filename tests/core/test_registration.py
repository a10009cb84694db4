"""register_op / register_impl / register_fake: happy paths and every registration error."""

from __future__ import annotations

import pytest
import torch

import opir
from conftest import scale
from opir import RegistrationError


def _opir_has(name: str) -> bool:
    return hasattr(torch.ops.opir, name)


def test_register_op_defines_a_functional_torch_op(scale_op):
    assert opir.registry[scale_op.name] is scale_op
    assert scale_op.torch_op is getattr(torch.ops.opir, scale_op.name).default
    assert str(scale_op.torch_op._schema).endswith(
        "(Tensor x, Tensor? weight, float alpha=2.) -> Tensor"
    )
    assert scale_op.activations == ("x",)
    assert list(scale_op.impls) == ["native", "inductor"]  # inductor serves every op
    assert scale_op.maybe_inplace is None


def test_explicit_activations_and_inplace_overload(make_op):
    op = make_op(scale, activations=["x", "weight"], allow_inplace=True)
    assert op.activations == ("x", "weight")
    schema = str(op.maybe_inplace.torch_op._schema)
    assert "Tensor(a0!) x" in schema and "Tensor(a1!)? weight" in schema


@pytest.mark.parametrize("name", ["Bad", "1abc", "has-dash", "", "with space", 5])
def test_invalid_op_names_are_rejected(name):
    with pytest.raises(RegistrationError, match="invalid op name"):
        opir.register_op(name=name)(scale)


def test_duplicate_op_name_is_rejected(scale_op):
    with pytest.raises(RegistrationError, match="already registered"):
        opir.register_op(name=scale_op.name)(scale)


def _kwonly(x: torch.Tensor, *, alpha: float) -> torch.Tensor:
    return x * alpha


def _variadic(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    return x


def _unannotated(x, alpha=1.0):
    return x


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_kwonly, "keyword-only or variadic"),
        (_variadic, "keyword-only or variadic"),
        (_unannotated, "cannot infer a torch schema"),
    ],
)
def test_bad_signatures_register_nothing(fn, message):
    name = f"bad_sig{fn.__name__}"
    with pytest.raises(RegistrationError, match=message):
        opir.register_op(name=name)(fn)
    assert name not in opir.registry
    assert not _opir_has(name)


def test_activation_errors_register_nothing():
    with pytest.raises(RegistrationError, match=r"activations \['y'\] are not parameters"):
        opir.register_op(name="bad_act1", activations=["y"])(scale)
    with pytest.raises(RegistrationError, match=r"activations \['alpha'\] must be Tensors"):
        opir.register_op(name="bad_act2", activations=["alpha"])(scale)
    with pytest.raises(RegistrationError, match="needs at least one activation"):
        opir.register_op(name="bad_act3", activations=[], allow_inplace=True)(scale)
    for name in ("bad_act1", "bad_act2", "bad_act3"):
        assert name not in opir.registry and not _opir_has(name)


def test_register_impl_returns_fn_and_adds_provider(scale_op):
    def fast(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor:
        return x * alpha if weight is None else x * alpha * weight

    assert scale_op.register_impl("fast")(fast) is fast
    impl = scale_op.impls["fast"]
    assert (impl.provider, impl.fn, impl.supported, impl.inplace) == ("fast", fast, True, False)


@pytest.mark.parametrize(
    "wrong",
    [
        "def f(x: torch.Tensor, w: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor: ...",
        "def f(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 3.0)"
        " -> torch.Tensor: ...",
        "def f(x: torch.Tensor, weight: torch.Tensor, alpha: float = 2.0) -> torch.Tensor: ...",
        "def f(x: torch.Tensor, weight: torch.Tensor | None, alpha: int = 2) -> torch.Tensor: ...",
        "def f(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor: ...",
    ],
    ids=["name", "default", "optional", "type", "arity"],
)
def test_impl_schema_must_match_exactly(scale_op, wrong):
    namespace = {"torch": torch}
    exec(wrong, namespace)
    with pytest.raises(RegistrationError, match=r"schema .* but the op's is"):
        scale_op.register_impl("other")(namespace["f"])
    assert list(scale_op.impls) == ["native", "inductor"]  # inductor serves every op


@pytest.mark.parametrize(
    "pred",
    [
        lambda x, w, alpha=2.0: True,
        lambda x, weight, alpha=1.0: True,
        lambda x, weight, alpha: True,
        lambda x, weight: True,
        lambda *args: True,
        lambda x, weight, *, alpha=2.0: True,
    ],
    ids=["name", "default", "no-default", "arity", "variadic", "kwonly"],
)
def test_predicate_must_mirror_the_op_signature(scale_op, pred):
    with pytest.raises(RegistrationError, match="same names and defaults"):
        scale_op.register_impl("p", supports_args=pred)
    assert list(scale_op.impls) == ["native", "inductor"]  # inductor serves every op


def test_provider_name_errors(scale_op):
    scale_op.register_impl("fast")(scale)
    with pytest.raises(RegistrationError, match="already has a 'fast' impl"):
        scale_op.register_impl("fast")
    with pytest.raises(RegistrationError, match="reserved"):
        scale_op.register_impl("native")
    with pytest.raises(RegistrationError, match="invalid provider name"):
        scale_op.register_impl("Fast-Kernel")
    with pytest.raises(RegistrationError, match="must be a bool"):
        scale_op.register_impl("lazy", supported=lambda: True)
    with pytest.raises(RegistrationError, match="must be callable"):
        scale_op.register_impl("p", supports_args=True)


def test_inplace_impl_needs_allow_inplace(scale_op):
    with pytest.raises(RegistrationError, match="not registered with allow_inplace=True"):
        scale_op.register_impl("ip", inplace=True)


def test_register_fake_checks_schema_and_is_used(scale_op):
    with pytest.raises(RegistrationError, match="fake of op"):
        scale_op.register_fake(lambda x: x)

    calls = []

    def fake(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor:
        calls.append(x.shape)
        return torch.empty_like(x)

    scale_op.register_fake(fake)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = scale_op(torch.empty(3, 5), None)
    assert out.shape == (3, 5) and calls == [torch.Size([3, 5])]


def test_wrong_arity_and_unknown_keywords_raise_clear_type_errors(scale_op):
    x = torch.ones(2, 3)
    with pytest.raises(TypeError, match=rf"{scale_op.name}\(\) missing 1 required"):
        scale_op(x)
    with pytest.raises(TypeError, match=rf"{scale_op.name}\(\) takes from 3 to 4 positional"):
        scale_op(x, None, 1.0, 5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta'"):
        scale_op(x, None, beta=1.0)
    with pytest.raises(TypeError, match=rf"opir op '{scale_op.name}'.*Signature"):
        scale_op.dispatch(x)


def test_drop_unregisters_completely(make_op):
    op = make_op(scale)
    name = op.name
    op.drop()
    assert name not in opir.registry and not _opir_has(name)
    again = opir.register_op(name=name)(scale)  # the name is free again
    again.drop()
