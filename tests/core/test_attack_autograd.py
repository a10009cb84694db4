"""Hostile-user tests of the inference-op contract under every kind of autodiff.

Each "Expected ... Actual ..." docstring names what the op did before the fix.
An opir kernel computes no derivatives, so any autodiff that reaches one must
raise the op's clear error; a missing, zero or pass-through derivative is a
silently wrong answer.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad

import opir


def _scale(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w


def _add_scale(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + x_other
    return s, s * 2


def _sum_list(parts: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    out = w * 0
    for t in parts:
        out = out + t * w
    return out


@pytest.fixture(params=["native", "kernel"])
def scale_op(make_op, request):
    """An op whose priority is its native spec, or an opaque kernel (as a C++ or
    triton kernel is: it computes through no autograd-visible torch ops)."""
    op = make_op(_scale)

    @op.register_impl("kernel")
    def kernel(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.detach() * w.detach()

    op.set_default([request.param])
    return op


@pytest.fixture
def inplace_op(make_op):
    op = make_op(_add_scale, allow_inplace=True)

    @op.register_impl("inpl", inplace=True)
    def inpl(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x.add_(x_other)
        x_other.copy_(x).mul_(2)
        return x, x_other

    op.set_default(["inpl"])
    return op


def _derivatives(f, x):
    """jvp, jacfwd and eager dual tensors: forward-mode AD's three doors."""
    t = torch.randn_like(x)
    yield "jvp", lambda: torch.func.jvp(f, (x,), (t,))
    yield "jacfwd", lambda: torch.func.jacfwd(f)(x)

    def dual():
        with fwad.dual_level():
            out = f(fwad.make_dual(x.clone(), t))
            return fwad.unpack_dual(out).tangent

    yield "make_dual", dual


def test_forward_mode_ad_through_an_op_raises(scale_op):
    """Expected: forward-mode AD through an op raises the inference-op error.
    Actual: jvp / jacfwd returned zero tangents (any priority, native included);
    make_dual gave a None tangent with a kernel."""
    w = torch.randn(4)
    for via, run in _derivatives(lambda x: scale_op(x, w), torch.randn(3, 4)):
        with pytest.raises(RuntimeError, match="no forward-mode derivative"):
            run()
            pytest.fail(f"{via} did not raise")


def test_forward_mode_ad_through_a_dual_weight_raises(scale_op):
    x = torch.randn(3, 4)
    for _via, run in _derivatives(lambda w: scale_op(x, w), torch.randn(4)):
        with pytest.raises(RuntimeError, match="no forward-mode derivative"):
            run()


@pytest.mark.parametrize("overload", ["default", "maybe_inplace"])
def test_forward_mode_ad_through_an_inplace_impl_raises(inplace_op, overload):
    """Expected: the error. Actual: the donated input's tangent came back unchanged
    as the output's (the kernel wrote the primal in place under its dual)."""
    call = inplace_op if overload == "default" else inplace_op.maybe_inplace
    other = torch.randn(3, 4)
    for _via, run in _derivatives(lambda x: call(x, other.clone())[0], torch.randn(3, 4)):
        with pytest.raises(RuntimeError, match="no forward-mode derivative"):
            run()


def test_forward_mode_ad_through_rms_norm_on_every_provider_raises():
    x, w, r = torch.randn(3, 8), torch.randn(8), torch.randn(3, 8)
    ops = opir.ops.rms_norm, opir.ops.fused_add_rms_norm
    for provider in ("native", "cpu", "inductor"):
        with ops[0].set_priority([provider]), ops[1].set_priority([provider]):
            for f in (
                lambda a: ops[0](a, w, 1e-6),
                lambda a: ops[1](a, r.clone(), w, 1e-6)[0],
                lambda a: ops[1].maybe_inplace(a, r.clone(), w, 1e-6)[1],
            ):
                for via, run in _derivatives(f, x):
                    with pytest.raises(RuntimeError, match="no forward-mode derivative"):
                        run()
                        pytest.fail(f"{provider} {via} did not raise")


def test_ops_on_plain_tensors_still_run_under_forward_mode_ad(scale_op):
    """Only tangent-carrying arguments are refused: an op on constants inside a
    jvp, or called while a dual level is open, computes as usual."""
    w, c = torch.randn(4), torch.randn(3, 4)
    _out, tangent = torch.func.jvp(lambda x: x * scale_op(c, w), (torch.randn(3, 4),), (c,))
    torch.testing.assert_close(tangent, c * (c * w))
    with fwad.dual_level():
        torch.testing.assert_close(scale_op(c, w), c * w)


def test_a_tuple_for_a_tensor_list_parameter_does_not_escape_the_grad_check(make_op):
    """Expected: backward through the op raises the inference-op error, whether
    the list[Tensor] argument is a list or a tuple. Actual: with a tuple the grad
    check missed its elements and the gradient was silently dropped."""
    op = make_op(_sum_list)

    @op.register_impl("kernel")
    def kernel(parts: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        return _sum_list([t.detach() for t in parts], w.detach())

    op.set_default(["kernel"])
    a = torch.randn(4, requires_grad=True)
    w = torch.randn(4)
    for seq in ([a, a, a], (a, a, a)):
        for call in (op, op.torch_op):
            y = call(seq, w)
            assert y.requires_grad
            with pytest.raises(RuntimeError, match="inference op and has no backward"):
                y.sum().backward()
    with opir.trace():  # the full-selection path
        y = op((a, a), w)
    with pytest.raises(RuntimeError, match="inference op and has no backward"):
        y.sum().backward()


@pytest.fixture
def pointer_writing_op(make_op):
    """An in-place impl that writes like a C++ or triton kernel: through memory
    autograd does not see (``.data`` shares the storage, not the version counter)."""
    op = make_op(_add_scale, allow_inplace=True)

    @op.register_impl("kernel", inplace=True, aliasing_safe=True)
    def kernel(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x.data.add_(x_other.data)
        x_other.data.copy_(x.data).mul_(2)
        return x, x_other

    @op.register_impl("guarded_kernel", inplace=True)
    def guarded_kernel(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(x, x_other)

    return op


@pytest.mark.parametrize("provider", ["kernel", "guarded_kernel"])
@pytest.mark.parametrize("path", ["eager", "torch_op"])
def test_donating_a_tensor_saved_for_backward_makes_that_backward_raise(
    pointer_writing_op, provider, path
):
    """Expected: torch's "modified by an inplace operation" error, as for any
    in-place torch op. Actual: C++ / triton kernels bumped no version counter and
    the backward silently used the overwritten values."""
    pointer_writing_op.set_default([provider])
    w = torch.randn(4, requires_grad=True)
    x, other = torch.randn(4), torch.randn(4)
    z = x * w  # saves x for w's gradient
    call = pointer_writing_op.maybe_inplace
    (call if path == "eager" else call.torch_op)(x, other)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_donating_to_the_cpu_kernel_bumps_version_counters():
    op = opir.ops.fused_add_rms_norm
    w = torch.randn(8, requires_grad=True)
    x, r = torch.randn(2, 8), torch.randn(2, 8)
    versions = x._version, r._version
    z = (x + r) * w
    with op.set_priority(["cpu"]):
        assert op.dispatch(x, r, w.detach(), 1e-6).provider == "cpu"
        op.maybe_inplace(x, r, w.detach(), 1e-6)
    assert x._version > versions[0] and r._version > versions[1]
    z.sum().backward()  # z saved neither x nor r: still fine
    z = x * w
    with op.set_priority(["cpu"]):
        op.maybe_inplace(x, r, w.detach(), 1e-6)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
