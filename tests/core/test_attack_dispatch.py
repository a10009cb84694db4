"""Hostile-user tests of eager dispatch, donation and the backward refusal.

Each test with an "Expected ... Actual ..." docstring is the regression test of
a bug found by attacking opir from outside; "Actual" is what it did before
the fix.
"""

from __future__ import annotations

import pytest
import torch


def _ident(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w


def _two_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x * 2, x.argmax(-1)


def _scale1(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return x * alpha


def _add_scale(
    x: torch.Tensor, x_other: torch.Tensor, alpha: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + x_other
    return s, s * alpha


@pytest.fixture
def inplace_op(make_op):
    op = make_op(_add_scale, allow_inplace=True)

    @op.register_impl("inpl", inplace=True)
    def inpl(
        x: torch.Tensor, x_other: torch.Tensor, alpha: float = 2.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x.add_(x_other)
        x_other.copy_(x).mul_(alpha)
        return x, x_other

    op.set_default(["inpl"])
    return op


def test_refusing_backward_does_not_flip_requires_grad_of_the_callers_input(make_op):
    """An impl may legitimately return an input unchanged (an alias).

    op(x, w) with only w requiring grad; impl returns x.
    Expected: x.requires_grad stays False (the call must not mutate the
    caller's tensors). Actual: x.requires_grad becomes True, because
    overloads._refuse_backward does ``out.requires_grad_()`` on the output,
    which *is* x.
    """
    op = make_op(_ident)

    @op.register_impl("alias")
    def alias(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x

    op.set_default(["alias"])
    x, w = torch.ones(3), torch.ones(3, requires_grad=True)
    y = op(x, w)
    assert not x.requires_grad
    with pytest.raises(RuntimeError, match="inference op"):
        y.sum().backward()


def test_grad_inputs_with_an_integer_output_behave_like_the_torch_op(make_op):
    """op(x) -> (float, int64) with x requiring grad.

    Expected: same as ``op.torch_op(x)``: the outputs come back, the float
    one with a grad_fn that refuses backward, the int one without.
    Actual: the eager fast path raises ``RuntimeError: only Tensors of
    floating point dtype can require gradients`` (overloads._refuse_backward
    calls ``t.requires_grad_()`` on every output).
    """
    op = make_op(_two_outputs)
    x = torch.ones(2, 3, requires_grad=True)
    ref = op.torch_op(x)
    out = op(x)
    torch.testing.assert_close(out, ref)
    assert out[1].dtype == torch.int64 and not out[1].requires_grad
    with pytest.raises(RuntimeError, match="inference op"):
        out[0].sum().backward()


def test_withdrawn_impl_is_not_called_inside_a_scope(make_op):
    """``with op.set_priority(["broken", "native"])`` then ``op.withdraw_impl("broken", ...)``
    (e.g. its lazy C++ build failed on the first call inside the scope).

    Expected: later calls in the scope skip 'broken' (the docstring of
    withdraw_impl: "later calls skip it"). Actual: 'broken' keeps running in
    the scope and get_priority() still lists it; the Priority built by
    Op.set_priority (op.py set_priority / scope.overriding) is never rebuilt.
    """
    op = make_op(_scale1)
    calls = []

    @op.register_impl("broken")
    def broken(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        calls.append(1)
        return x * alpha

    with op.set_priority(["broken", "native"]):
        op.withdraw_impl("broken", "build failed")
        op(torch.ones(2))
        assert calls == []
        assert op.get_priority() == ["native"]


def test_unregistered_impl_is_not_called_inside_a_scope(make_op):
    """Expected: after ``op.unregister_impl("tmp")`` inside ``with op.set_priority(["tmp"])``
    the impl is gone (calls use native, or raise clearly). Actual: 'tmp' still
    runs and get_priority() == ['tmp'], a provider op.impls no longer has."""
    op = make_op(_scale1)
    calls = []

    @op.register_impl("tmp")
    def tmp(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        calls.append(1)
        return x * alpha

    with op.set_priority(["tmp"]):
        op.unregister_impl("tmp")
        op(torch.ones(2))
        assert calls == []
        assert all(p in op.impls for p in op.get_priority())


def test_donating_the_same_tensor_twice_matches_the_functional_op(inplace_op):
    """``op.maybe_inplace(a, a)`` with an in-place impl.

    Expected: the same values as the functional ``op(a, a)`` = (2, 4), or a
    clear error saying the donated activations alias. Actual: (4, 4): the
    impl's writes into x are seen through x_other. Nothing in
    overloads.MaybeInplace / the generated fast path checks aliasing.
    """
    ref = inplace_op(torch.ones(3), torch.ones(3))
    a = torch.ones(3)
    try:
        out = inplace_op.maybe_inplace(a, a)
    except (RuntimeError, ValueError) as e:
        assert "alias" in str(e) and inplace_op.name in str(e)
        return
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_donating_an_expanded_tensor_matches_the_functional_op(inplace_op):
    """``op.maybe_inplace(torch.ones(1).expand(3), y)``.

    Expected: bit-identical to the functional op (a tensor with internal
    overlap cannot be donated, so it should be cloned or the next impl used),
    or an error naming the op and the argument. Actual: RuntimeError
    'unsupported operation: more than one element of the written-to tensor
    refers to a single memory location' from deep inside the impl; the
    functional op works.
    """
    ref = inplace_op(torch.ones(1).expand(3), torch.ones(3))
    out = inplace_op.maybe_inplace(torch.ones(1).expand(3), torch.ones(3))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_functional_overload_never_writes_into_aliased_inputs(inplace_op):
    """Covered right: the functional op clones each activation separately."""
    a = torch.ones(3)
    out = inplace_op(a, a)
    torch.testing.assert_close(a, torch.ones(3), rtol=0, atol=0)
    torch.testing.assert_close(out, (torch.full((3,), 2.0), torch.full((3,), 4.0)))


class _Holder:
    def scale(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return x * alpha


def test_inductor_provider_on_an_op_whose_native_is_a_bound_method(make_op):
    """register_op accepts a bound method (its signature has no self).

    Expected: ``with op.set_priority(["inductor"])`` computes x * alpha, or
    register_op refuses bound methods clearly. Actual: DispatchError "the
    'inductor' provider failed to compile ... (TypeError: M.scale() missing
    1 required positional argument: 'alpha')": providers/inductor.py
    CompiledNative._compile rebuilds a plain function from
    ``native.__code__`` without ``__self__``. (Runs one tiny torch.compile.)
    """
    op = make_op(_Holder().scale, name="test_attack_bound_method")
    with op.set_priority(["inductor"]):
        out = op(torch.ones(3), 3.0)
    torch.testing.assert_close(out, torch.full((3,), 3.0))


def test_vmap_over_maybe_inplace(inplace_op):
    """``torch.vmap(op.maybe_inplace)(a, b)``.

    Expected: the functional op's values (donation is only permission to
    write, so serving the call functionally is valid), or an error naming
    the op and saying to call the functional op. Actual: RuntimeError
    "Batching rule not implemented for opir::<op>.maybe_inplace; the fallback
    path doesn't work on out= or view ops" (the generated fast path sends
    functorch calls to the torch op, which has no batching rule).
    """
    a, b = torch.ones(3, 2), torch.ones(3, 2)
    ref = torch.vmap(inplace_op)(a, b)
    try:
        out = torch.vmap(inplace_op.maybe_inplace)(a.clone(), b.clone())
    except RuntimeError as e:
        assert "Batching rule" not in str(e) and inplace_op.name in str(e)
        return
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_autograd_grad_of_an_input_used_only_through_the_op_raises(make_op):
    """``torch.autograd.grad(loss, [w], allow_unused=True)`` with ``w`` reaching
    the loss only through an opir op: the refusal node must lie on the path to
    ``w`` (it takes the inputs that require grad), so this raises instead of
    returning ``(None,)`` — a silently missing gradient."""
    op = make_op(_ident)
    w = torch.ones(3, requires_grad=True)
    loss = (op(torch.ones(3), w) * 2).sum()
    with pytest.raises(RuntimeError, match="inference op"):
        torch.autograd.grad(loss, [w], allow_unused=True)


@pytest.mark.parametrize(
    "views",
    [
        lambda buf: (buf[:, :4], buf[:, 2:6]),  # partly overlapping columns
        lambda buf: (buf[:, :4], buf[:, 4:8]),  # disjoint slices of one buffer
        lambda buf: (buf[:, :4], buf[:, :4].t().t()),  # the same memory, another view object
    ],
    ids=["overlapping", "disjoint", "same_memory"],
)
def test_donating_views_of_one_buffer_matches_the_functional_op(inplace_op, views):
    """Donated activations that are views of one buffer give the functional op's values."""
    buf = torch.arange(24.0).reshape(3, 8)
    ref = inplace_op(*(v.clone() for v in views(buf.clone())))
    out = inplace_op.maybe_inplace(*views(buf.clone()))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
