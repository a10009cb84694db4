"""The conformance grid (opir.check) catches each kind of broken impl, and passes good ones.

Each broken impl below is registered on a built-in op under a transient
provider name, checked in process, and removed again.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import opir
from opir.check import CheckError, check_provider, providers
from opir.ops import fused_add_rms_norm, rms_norm


def _rms(*args):
    return rms_norm.native(*args)


def _with_signature_of(op, fn):
    """``fn`` (every argument positionally) presented with the op's own signature, as
    the provider kit presents impls: no test restates ``rms_norm``'s parameters."""

    def wrapped(*args):
        return fn(*args)

    wrapped.__signature__ = op.signature
    wrapped.__name__ = fn.__name__
    return wrapped


@contextlib.contextmanager
def registered(op, provider, fn, **kwargs):
    if kwargs.get("supports_args") is not None:
        kwargs["supports_args"] = _with_signature_of(op, kwargs["supports_args"])
    op.register_impl(provider, **kwargs)(_with_signature_of(op, fn))
    try:
        yield
    finally:
        op.unregister_impl(provider)


def outcomes(provider, op, checks):
    report = check_provider(provider, [op.name], checks=checks)
    return {o.check: o for o in report.outcomes}


def test_a_correct_impl_passes_every_check():
    def good(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return _rms(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    with registered(rms_norm, "test_good", good):
        report = check_provider("test_good", ["rms_norm"])
    statuses = {o.check: o.status for o in report.outcomes}
    assert statuses.pop("inplace") == "skip"  # rms_norm has no maybe_inplace
    assert set(statuses.values()) == {"pass"}, report.outcomes
    assert report.ok


def test_wrong_values_fail_native():
    def l1_norm(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        y = x.float() / (x.float().abs().mean(-1, keepdim=True) + epsilon)
        return (y * weight if weight is not None else y).to(x.dtype)

    with registered(rms_norm, "test_l1", l1_norm):
        got = outcomes("test_l1", rms_norm, ["native", "random"])
    assert got["native"].status == "fail" and "Tensor-likes are not close" in got["native"].detail
    assert got["random"].status == "fail"


def test_mutating_an_input_fails_native():
    def writes_x(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        out = _rms(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)
        x.copy_(out)
        return out

    with registered(rms_norm, "test_writes", writes_x):
        got = outcomes("test_writes", rms_norm, ["native"])
    assert got["native"].status == "fail"
    assert "argument 0 was modified" in got["native"].detail


def test_ignoring_strides_fails_layouts_only():
    def assumes_contiguous(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        dense = torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset())
        return _rms(dense, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    with registered(rms_norm, "test_dense", assumes_contiguous):
        got = outcomes("test_dense", rms_norm, ["native", "layouts"])
    assert got["native"].status == "pass"
    assert got["layouts"].status == "fail"


def test_declining_hostile_layouts_is_allowed():
    def contiguous_only(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return x.is_contiguous()

    def assumes_contiguous(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        dense = torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset())
        return _rms(dense, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    with registered(rms_norm, "test_picky", assumes_contiguous, supports_args=contiguous_only):
        got = outcomes("test_picky", rms_norm, ["layouts"])
    layouts = got["layouts"]
    assert layouts.status == "pass" and 0 < layouts.declined < layouts.cases


def test_crashing_on_zero_rows_fails_zero_rows():
    def needs_rows(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        x.float().abs().amax(dim=-2)  # no identity for an empty reduction
        return _rms(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    with registered(rms_norm, "test_rows", needs_rows):
        got = outcomes("test_rows", rms_norm, ["zero_rows", "native"])
    assert got["zero_rows"].status == "fail" and got["native"].status == "pass"


def test_bad_inputs_need_native_exception_type():
    def unchecked(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + epsilon)
        return (y * weight if weight is not None else y).to(x.dtype)

    with registered(rms_norm, "test_unchecked", unchecked):
        got = outcomes("test_unchecked", rms_norm, ["bad_inputs"])
    assert got["bad_inputs"].status == "fail"
    assert "where native raises ValueError" in got["bad_inputs"].detail


def test_supports_args_must_return_a_bool():
    def tensor_verdict(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return torch.tensor(x.shape[-1] > 0)

    def good(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return _rms(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)

    with registered(rms_norm, "test_verdict", good, supports_args=tensor_verdict):
        got = outcomes("test_verdict", rms_norm, ["native"])
    assert got["native"].status == "fail" and "not bool" in got["native"].detail


def test_a_fake_of_the_wrong_shape_fails_fake():
    name = "opir_check_test::wrong_fake"

    @torch.library.custom_op(name, mutates_args=())
    def kernel(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
        return _rms(x, weight, epsilon)

    @kernel.register_fake
    def _(x, weight, epsilon):
        return x.new_empty(x.shape[:-1])  # forgets the hidden dim

    def impl(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return kernel(x, weight, epsilon)

    def plain(x, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        return variance_size is None and weight_bias == 0.0 and not fp32_multiply

    with registered(rms_norm, "test_fake", impl, supports_args=plain):
        got = outcomes("test_fake", rms_norm, ["native", "fake"])
    assert got["native"].status == "pass"
    assert got["fake"].status == "fail" and "traces as" in got["fake"].detail


def test_an_inplace_impl_that_breaks_on_aliasing_fails_inplace():
    def clobbering(x, x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        x_residual.add_(x)  # residual := x + residual, then x := norm(residual)
        x.copy_(
            rms_norm.native(x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply)
        )
        return x, x_residual

    # aliasing_safe=True is a false promise: opir does not guard the calls.
    with registered(fused_add_rms_norm, "test_alias", clobbering, inplace=True, aliasing_safe=True):
        got = outcomes("test_alias", fused_add_rms_norm, ["inplace"])
    inplace = got["inplace"]
    assert inplace.status == "fail"
    assert "one tensor for every activation maybe_inplace" in inplace.detail


def test_an_inplace_impl_that_writes_the_weight_fails_inplace():
    def writes_weight(x, x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply):
        out = fused_add_rms_norm.native(
            x, x_residual, weight, epsilon, variance_size, weight_bias, fp32_multiply
        )
        if weight is not None:
            weight.zero_()
        return out

    with registered(fused_add_rms_norm, "test_weight", writes_weight, inplace=True):
        got = outcomes("test_weight", fused_add_rms_norm, ["inplace"])
    assert got["inplace"].status == "fail" and "argument 2 was modified" in got["inplace"].detail


def test_an_unsupported_provider_is_skipped_with_its_reason():
    with registered(rms_norm, "test_absent", _rms, supported=False, reason="no such chip here"):
        report = check_provider("test_absent", ["rms_norm"])
    assert {o.status for o in report.outcomes} == {"skip"}
    assert all("no such chip here" in o.detail for o in report.outcomes)
    assert not report.ok  # nothing was checked


def test_unknown_names_are_rejected_with_the_valid_ones():
    with pytest.raises(CheckError, match=r"unknown provider 'nope'.*cpu"):
        check_provider("nope")
    with pytest.raises(CheckError, match="reference"):
        check_provider("native")
    with pytest.raises(CheckError, match=r"unknown op 'nope'.*rms_norm"):
        check_provider("cpu", ["nope"])
    with pytest.raises(CheckError, match="no impl of op 'all_reduce_rms_norm'"):
        check_provider("cpu", ["all_reduce_rms_norm"])
    with pytest.raises(CheckError, match="unknown check"):
        check_provider("cpu", ["rms_norm"], checks=["nope"])
    assert "cpu" in providers() and "native" not in providers()
    assert opir.registry  # the grid reads the live registry


def test_integer_and_fp8_outputs_use_the_ops_tolerance(make_op):
    from opir.check.compare import assert_close_to

    def quantish(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(torch.int8), x.to(torch.float8_e4m3fn)

    op = make_op(quantish)
    want = (
        torch.tensor([3, 4], dtype=torch.int8),
        torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn),
    )
    one_step = (torch.tensor([3, 5], dtype=torch.int8), want[1])
    with pytest.raises(AssertionError):  # integers: exact by default
        assert_close_to(op, one_step, want)
    op.override_tolerance(torch.int8, atol=1.0, rtol=0.0)
    assert_close_to(op, one_step, want)
    fp8_step = (want[0], torch.tensor([1.0, 2.25]).to(torch.float8_e4m3fn))
    op.override_tolerance(torch.float8_e4m3fn, atol=0.0, rtol=0.0)
    with pytest.raises(AssertionError):
        assert_close_to(op, fp8_step, want)
    op.override_tolerance(torch.float8_e4m3fn, atol=0.0, rtol=0.125)
    assert_close_to(op, fp8_step, want)  # compared in fp32 (torch refuses fp8 tolerances)
    with pytest.raises(AssertionError, match="dtype"):
        assert_close_to(op, (want[0], want[1].float()), want)
