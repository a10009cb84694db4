"""Eager dispatch: same choice on both paths, maybe_inplace donation, autograd policy."""

from __future__ import annotations

import pytest
import torch

import opir
from conftest import add_scale, scale
from opir import DispatchError


def _half_only(x, weight, alpha=2.0):
    return x.dtype == torch.float16


@pytest.fixture
def op(scale_op):
    """scale with providers: 'half' (fp16 only, computes in fp32) and 'tagged' (unconditional)."""

    @scale_op.register_impl("half", supports_args=_half_only)
    def half(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor:
        return scale(x.float(), None if weight is None else weight.float(), alpha).to(x.dtype)

    scale_op.register_impl("tagged")(scale)
    scale_op.set_default(["half", "tagged"])
    return scale_op


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [True, False])
def test_eager_and_torch_op_paths_pick_the_same_impl(op, dtype, with_weight):
    x = torch.randn(4, 8).to(dtype)
    w = torch.randn(8).to(dtype) if with_weight else None
    with opir.trace() as t:
        eager = op(x, w, 3.0)
        through_torch = op.torch_op(x, w, 3.0)
    expected = "half" if dtype == torch.float16 else "tagged"
    assert [(r.path, r.provider) for r in t] == [("eager", expected), ("torch_op", expected)]
    assert op.dispatch(x, w, 3.0).provider == expected
    torch.testing.assert_close(eager, through_torch, rtol=0, atol=0)
    torch.testing.assert_close(eager, op.native(x, w, 3.0), **op.tolerance(dtype)._asdict())


def test_keywords_and_defaults_reach_impls_positionally(scale_op):
    seen = []

    def pred(x, weight, alpha=2.0):
        seen.append(("pred", alpha))
        return True

    @scale_op.register_impl("spy", supports_args=pred)
    def spy(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor:
        seen.append(("impl", alpha))
        return x

    scale_op.set_default(["spy"])
    x = torch.ones(2)
    scale_op(x, None)
    scale_op(x, weight=None, alpha=5.0)
    scale_op.torch_op(x, None)
    calls = [("pred", 2.0), ("impl", 2.0), ("pred", 5.0), ("impl", 5.0), ("pred", 2.0)]
    assert seen == [*calls, ("impl", 2.0)]


def _register_inplace(op):
    """An in-place provider for add_scale: writes both results into the donated inputs."""

    @op.register_impl("inplace", inplace=True)
    def add_scale_inplace(
        x: torch.Tensor, x_other: torch.Tensor, alpha: float = 2.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x.add_(x_other)
        x_other.copy_(x).mul_(alpha)
        return x, x_other

    op.set_default(["inplace"])


def test_maybe_inplace_writes_into_donated_inputs(add_scale_op):
    _register_inplace(add_scale_op)
    x, other = torch.randn(3, 5), torch.randn(3, 5)
    expected = add_scale(x, other, 2.0)
    x_ptr, other_ptr = x.data_ptr(), other.data_ptr()
    with opir.trace() as t:
        s, scaled = add_scale_op.maybe_inplace(x, other)
    assert t.records[0].overload == "maybe_inplace" and t.providers() == ["inplace"]
    assert (s.data_ptr(), scaled.data_ptr()) == (x_ptr, other_ptr)
    torch.testing.assert_close((s, scaled), expected, rtol=0, atol=0)


@pytest.mark.parametrize("via", ["eager", "torch_op"])
def test_default_overload_gives_inplace_impls_clones(add_scale_op, via):
    _register_inplace(add_scale_op)
    x, other = torch.randn(3, 5), torch.randn(3, 5)
    x_before, other_before = x.clone(), other.clone()
    call = add_scale_op if via == "eager" else add_scale_op.torch_op
    s, scaled = call(x, other)
    torch.testing.assert_close((x, other), (x_before, other_before), rtol=0, atol=0)
    assert s.data_ptr() not in (x.data_ptr(), other.data_ptr())
    donated = add_scale_op.maybe_inplace(x_before.clone(), other_before.clone())
    torch.testing.assert_close((s, scaled), donated, rtol=0, atol=0)  # bit-identical


def test_grad_mode_forward_works_backward_raises(op):
    w = torch.nn.Parameter(torch.randn(8))
    x = torch.randn(2, 8)
    with opir.trace() as t:
        y = op(x, w)
    # Grad mode stays on the eager path (no dispatcher cost); the output still
    # carries a grad_fn, whose backward raises instead of dropping gradients.
    assert t.records[0].path == "eager"
    assert y.requires_grad
    torch.testing.assert_close(y, scale(x, w).detach())
    with pytest.raises(RuntimeError, match="inference op and has no backward"):
        y.sum().backward()
    y = op(x, w)  # the untraced fast path behaves the same
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference op and has no backward"):
        (y * 2).sum().backward()


def test_grad_mode_refuses_backward_for_every_output(add_scale_op):
    x = torch.randn(3, requires_grad=True)
    s, scaled = add_scale_op(x, torch.randn(3))
    assert s.requires_grad and scaled.requires_grad
    for out in (s, scaled):
        with pytest.raises(RuntimeError, match="inference op and has no backward"):
            out.sum().backward(retain_graph=True)


def test_no_grad_and_inference_mode_stay_on_the_fast_path(op):
    w = torch.nn.Parameter(torch.randn(8))
    x = torch.randn(2, 8)
    with opir.trace() as t:
        with torch.no_grad():
            op(x, w)
        with torch.inference_mode():
            op(x, w)
    assert [r.path for r in t] == ["eager", "eager"]


def test_maybe_inplace_refuses_tensors_that_require_grad(add_scale_op):
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="donates its inputs"):
        add_scale_op.maybe_inplace(x, torch.randn(3))


def test_tensor_subclasses_go_through_the_torch_op(op):
    class Tagged(torch.Tensor):
        pass

    x = torch.randn(2, 8).as_subclass(Tagged)
    with opir.trace() as t:
        op(x, None)
    assert t.records[0].path == "torch_op"


def test_trace_records_rejections_and_prints_a_table(op):
    op.set_default(["half", "tagged"])
    with opir.trace() as t:
        op(torch.ones(4, 8), None)
    (record,) = t.records
    assert record.provider == "tagged"
    assert record.rejected == (("half", "supports_args returned False"),)
    assert record.signature == "float32[4, 8]"
    text = str(t)
    assert op.name in text and "supports_args returned False" in text and "tagged" in text


def test_strict_mode_raises_instead_of_falling_back(op):
    x16, x32 = torch.ones(2, 8, dtype=torch.float16), torch.ones(2, 8)
    with opir.strict():
        op(x16, None)  # the preferred provider accepts: fine
        with pytest.raises(DispatchError, match="preferred provider 'half' to 'tagged'"):
            op(x32, None)
        with pytest.raises(DispatchError, match="half: supports_args returned False"):
            op.torch_op(x32, None)
    op(x32, None)  # strict mode ended with the block


def test_strict_mode_reports_unsupported_preferred_provider(op):
    op.register_impl("cuda_only", supported=False, reason="no CUDA device")(scale)
    op.set_default(["cuda_only", "tagged"])
    with opir.trace(strict=True) as t, pytest.raises(DispatchError, match="no CUDA device"):
        op(torch.ones(2), None)
    assert t.records[0].rejected == (("cuda_only", "not supported here: no CUDA device"),)
