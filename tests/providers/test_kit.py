"""The provider kit: impls derived from the op's signature, and the load-failure policy."""

from __future__ import annotations

import importlib.util
import logging
import types
import warnings

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import opir
from conftest import add_scale, scale
from opir.ops import all_reduce_rms_norm, fused_add_rms_norm, rms_norm
from opir.providers.kit import Provider, custom_op_schema, define

NAMESPACE = "opir_kit_test"


def _kernels_for(scale_op, add_op, calls: list[str]) -> types.SimpleNamespace:
    """Launchers (by op name) that record their calls and compute like the natives."""

    def scale_launcher(x, weight, alpha):
        calls.append("scale")
        return scale(x, weight, alpha)

    def add_launcher(x, x_other, alpha):  # in place: writes into the activations
        calls.append("add")
        s, out = add_scale(x, x_other, alpha)
        x.copy_(s)
        x_other.copy_(out)
        return x, x_other

    return types.SimpleNamespace(**{scale_op.name: scale_launcher, add_op.name: add_launcher})


@pytest.fixture
def ops(make_op):
    return make_op(scale), make_op(add_scale, allow_inplace=True)


def _provider(name, ops, load, errors=(ImportError,)) -> Provider:
    scale_op, add_op = ops
    provider = Provider(
        name, namespace=NAMESPACE, availability=(True, ""), load=load, load_errors=errors
    )
    provider.register(scale_op, lambda x, weight, alpha=2.0: x.dtype == torch.float32)
    provider.register(add_op, None, inplace=True)
    return provider


def _define(ops, calls):
    scale_op, add_op = ops
    kernels = _kernels_for(scale_op, add_op, calls)
    define(NAMESPACE, scale_op, getattr(kernels, scale_op.name))
    define(NAMESPACE, add_op, getattr(kernels, add_op.name), inplace=True)
    return kernels


def test_custom_op_schema_is_the_ops_own():
    assert custom_op_schema(rms_norm) == rms_norm.schema
    inplace = custom_op_schema(fused_add_rms_norm, inplace=True)
    assert inplace.startswith("(Tensor(a0!) x, Tensor(a1!) x_residual, Tensor? weight")
    assert inplace.endswith("-> ()")
    with pytest.raises(ValueError, match="allow_inplace=True"):
        custom_op_schema(rms_norm, inplace=True)


def test_impls_match_native_and_eager_becomes_the_launcher(ops):
    scale_op, add_op = ops
    calls: list[str] = []
    kernels = _define(ops, calls)
    loads = []
    _provider("kit_ok", ops, lambda: loads.append(1) or kernels)
    x, w = torch.randn(3, 4), torch.randn(4)
    with scale_op.set_priority(["kit_ok"]), opir.strict():
        torch.testing.assert_close(scale_op(x, w, 3.0), scale_op.native(x, w, 3.0))
        torch.testing.assert_close(scale_op(x, w, 3.0), scale_op.native(x, w, 3.0))
    assert loads == [1]  # loaded once, on the first call
    assert scale_op.impls["kit_ok"].eager is getattr(kernels, scale_op.name)  # no wrapper left
    assert calls == ["scale", "scale"]
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    expected = add_op.native(a, b, 2.0)
    with add_op.set_priority(["kit_ok"]), opir.strict():
        got = add_op.maybe_inplace(a, b)
    assert got[0] is a and got[1] is b
    torch.testing.assert_close(got, expected)


def test_traceable_impl_records_the_custom_op(ops):
    scale_op, add_op = ops
    calls: list[str] = []
    kernels = _define(ops, calls)
    _provider("kit_traced", ops, lambda: kernels)
    x, w = torch.randn(3, 4), torch.randn(4)
    # what the torch op's kernel and the compile lowering run: the impls' traceable fns
    scale_fx = make_fx(scale_op.impls["kit_traced"].fn, tracing_mode="fake")(x, w, 3.0)
    add_fx = make_fx(add_op.impls["kit_traced"].fn)(x.clone(), x.clone(), 2.0)
    assert f"{NAMESPACE}.{scale_op.name}.default" in scale_fx.code
    assert f"{NAMESPACE}.{add_op.name}_.default" in add_fx.code  # the in-place kernel
    torch.testing.assert_close(scale_fx(x, w, 3.0), scale_op.native(x, w, 3.0))


def _failing_load():
    raise ImportError("libkernel.so: cannot open shared object file")


def test_load_failure_falls_back_with_one_warning_when_not_asked_for(ops, caplog):
    scale_op, add_op = ops
    _provider("kit_fails", ops, _failing_load)
    opir.set_platform_defaults({op.name: ["kit_fails", "native"] for op in ops})
    x, w = torch.randn(3, 4), torch.randn(4)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "opir"):
        warnings.simplefilter("always")
        for _ in range(3):
            torch.testing.assert_close(scale_op(x, w), scale_op.native(x, w))
        a, b = torch.randn(3, 4), torch.randn(3, 4)
        torch.testing.assert_close(add_op.maybe_inplace(a.clone(), b), add_op.native(a, b))
    unavailable = [c for c in caught if "'kit_fails' provider is unavailable" in str(c.message)]
    assert len(unavailable) == 1 and "libkernel.so" in str(unavailable[0].message)
    assert sum("'kit_fails' provider is unavailable" in r.message for r in caplog.records) == 1
    for op in ops:  # withdrawn from every op, with the reason
        impl = op.impls["kit_fails"]
        assert not impl.supported and "libkernel.so" in impl.reason
        assert op.get_priority() == ["native"]


def test_load_failure_raises_when_the_user_asked_for_the_provider(ops):
    scale_op, _ = ops
    _provider("kit_asked", ops, _failing_load)
    x, w = torch.randn(3, 4), torch.randn(4)
    with scale_op.set_priority(["kit_asked", "native"]), pytest.raises(ImportError, match="libk"):
        scale_op(x, w)
    assert scale_op.impls["kit_asked"].supported  # nothing withdrawn: the user decides


def test_an_unexpected_load_error_is_a_bug_and_propagates(ops):
    scale_op, _ = ops

    def broken():
        raise ZeroDivisionError("bug in the provider")

    _provider("kit_bug", ops, broken)
    opir.set_platform_defaults({scale_op.name: ["kit_bug", "native"]})
    with pytest.raises(ZeroDivisionError):
        scale_op(torch.randn(2, 4), None)


def test_a_missing_launcher_is_named(ops):
    scale_op, _ = ops
    _provider("kit_missing", ops, lambda: types.SimpleNamespace())
    with scale_op.set_priority(["kit_missing"]), pytest.raises(AttributeError, match="define no"):
        scale_op(torch.randn(2, 4), None)


def test_bundled_providers_share_one_layout():
    from opir.providers import cpu, flashinfer, triton

    for package in (cpu, triton, flashinfer):
        for module in ("availability", "kernels", "impls"):
            assert importlib.util.find_spec(f"{package.__name__}.{module}") is not None
        provider = package.PROVIDER
        assert isinstance(provider, Provider)
        assert (provider.supported, provider.reason) == (package.SUPPORTED, package.REASON)
        assert provider.registered
        for op, _ in provider.registered:
            assert op.impls[provider.name].fn.__name__ == f"{provider.name}_{op.name}_traceable"


# --- renamed parameters and names: the old spellings ---------------------------------


def test_all_reduce_rms_norm_old_positional_order_is_a_clear_type_error():
    x, r, w = torch.randn(2, 8), torch.randn(2, 8), torch.randn(8)
    with pytest.raises(TypeError, match="pass weight_bias by keyword"):
        all_reduce_rms_norm(x, r, w, 1e-6, 1.0, None)  # (weight_bias, variance_size): old order
    with pytest.raises(TypeError, match=r"variance_size=0\.0"):
        all_reduce_rms_norm.native(x, r, w, 1e-6, 0.0)


def test_fused_allreduce_rms_norm_is_a_deprecated_alias():
    import opir.layers

    with pytest.warns(DeprecationWarning, match="fused_all_reduce_rms_norm"):
        old = opir.layers.fused_allreduce_rms_norm
    assert old is opir.layers.fused_all_reduce_rms_norm
    with pytest.raises(AttributeError):
        opir.layers.no_such_name  # noqa: B018
