"""An optional activation (rotary_embedding's ``key=None``) through every path: the
functional op and ``maybe_inplace`` with an in-place provider made with the kit, the
torch op, fake tensors, overlap guards, and torch.compile / opir.compile."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import opir
from opir.ops import rotary_embedding
from opir.ops.rotary import cos_sin_cache
from opir.providers.kit import Provider, define

NAMESPACE = "opir_rope_test"
PROVIDER = "rope_inplace"


def _write_in_place(positions, query, key, head_size, cache, is_neox_style, rotary_dim=None):
    """An in-place kernel: the native's values written into query (and key)."""
    out = rotary_embedding.native(
        positions, query, key, head_size, cache, is_neox_style, rotary_dim
    )
    query.copy_(out[0])
    if key is not None:
        key.copy_(out[1])
        return [query, key]
    return [query]


@pytest.fixture(scope="module")
def op():
    """A copy of rotary_embedding (same native, its own name) with an in-place provider."""
    copy = opir.register_op(
        name="rope_inplace_test", activations=("query", "key"), allow_inplace=True
    )(rotary_embedding.native)
    define(NAMESPACE, copy, _write_in_place, inplace=True)
    kernels = type("Kernels", (), {copy.name: staticmethod(_write_in_place)})
    provider = Provider(
        PROVIDER, namespace=NAMESPACE, availability=(True, ""), load=lambda: kernels
    )
    provider.register(copy, None, inplace=True)
    copy.set_default([PROVIDER, "native"])
    yield copy
    copy.drop()


def _args(key=True, dtype=torch.bfloat16, tokens=5):
    return list(
        rotary_embedding.sample_inputs(dtype=dtype, num_tokens=tokens, hidden_size=16, has_key=key)
    )


def _clones(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _same(got, want):
    assert isinstance(got, list) and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("key", [True, False])
def test_maybe_inplace_writes_query_and_key(op, key):
    args = _args(key)
    want = rotary_embedding.native(*args)
    with opir.strict():
        got = op.maybe_inplace(*args)
    _same(got, want)
    assert got[0] is args[1] and (not key or got[1] is args[2])
    assert op.dispatch(*args).provider == PROVIDER


@pytest.mark.parametrize("key", [True, False])
def test_functional_call_leaves_inputs_alone(op, key):
    args = _args(key)
    before = _clones(args)
    with opir.strict():
        got = op(*args)
    _same(got, rotary_embedding.native(*before))
    for a, b in zip(args, before, strict=True):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)


@pytest.mark.parametrize("three_d", [False, True])
def test_fused_qkv_views_are_written_in_place_and_v_is_untouched(op, three_d):
    tokens, hs, nq, nk = 6, 16, 4, 2
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs).to(torch.bfloat16)
    q, k, v = qkv.split([nq * hs, nk * hs, nk * hs], dim=-1)
    if three_d:
        q, k = q.unflatten(-1, (nq, hs)), k.unflatten(-1, (nk, hs))
    v_before, positions = v.clone(), torch.tensor([0, 5, 2, 31, 7, 7])
    cache = cos_sin_cache(32, hs, dtype=torch.bfloat16)
    want = rotary_embedding.native(positions, q, k, hs, cache, False)
    got = op.maybe_inplace(positions, q, k, hs, cache, False)
    _same(got, want)
    assert got[0] is q and got[1] is k  # not served on clones: the columns do not overlap
    assert torch.equal(v, v_before)
    assert torch.equal(qkv[:, : nq * hs], want[0].reshape(tokens, -1))


@pytest.mark.parametrize("how", ["same tensor", "overlapping views", "key is the cache"])
def test_overlapping_donations_run_on_clones(op, how):
    """query and key sharing memory (or an activation sharing memory with what the kernel
    reads) are served on clones, with the functional values, as for fused_add_rms_norm."""
    positions, q, k, hs, cache, neox, rd = _args(dtype=torch.float32)
    if how == "same tensor":
        k = q
    elif how == "overlapping views":
        buffer = torch.randn(5, 48)
        q, k = buffer[:, :32], buffer[:, 16:32]
    else:
        cache = cos_sin_cache(64, hs)
        k = cache[:5]  # [5, 16]: one head
    want = rotary_embedding.native(positions, q.clone(), k.clone(), hs, cache.clone(), neox, rd)
    got = op.maybe_inplace(positions, q, k, hs, cache, neox, rd)
    _same(got, want)
    assert got[0] is not q


@pytest.mark.parametrize("key", [True, False])
def test_torch_ops_and_fakes(op, key):
    args = _args(key)
    want = rotary_embedding.native(*args)
    _same(op.torch_op(*args), want)
    _same(
        op.maybe_inplace.torch_op(*_clones(args)),
        want,
    )
    for overload in (op.torch_op, op.maybe_inplace.torch_op):
        gm = make_fx(lambda *a, f=overload: f(*a), tracing_mode="fake")(*args)
        _same(list(gm(*_clones(args))), want)
    # the in-place impl's traceable: the custom op, then the activations it wrote
    traced = make_fx(op.impls[PROVIDER].fn, tracing_mode="fake")(*args)
    assert f"{NAMESPACE}.{op.name}_.default" in traced.code
    out = traced(*_clones(args))
    _same(list(out), want)


def test_optional_activation_none_in_opir_check_style_cases(op):
    """on_clones and the overlap guard skip a None activation."""
    from opir.core.impl import guarded_donation, on_clones

    seen = []
    cloning = on_clones(lambda *a: seen.append(a), op.activation_positions)
    args = _args(False)
    cloning(*args)
    assert seen[0][2] is None and seen[0][1] is not args[1]
    guarded = guarded_donation(
        lambda *a: "direct", op.activation_positions, op.sig.tensor_positions
    )
    assert guarded(*args) == "direct"


def _model(f):
    def run(positions, q, k, cache):
        both = f(positions, q, k, 16, cache, True)
        alone = f(positions, q * 2, None, 16, cache, True)
        donated = f.maybe_inplace(positions, q + 1, None, 16, cache, True)
        return both[0], both[1], alone[0], donated[0]

    return run


@pytest.mark.slow
def test_compile_fullgraph_with_and_without_key(op):
    """key=None is a graph-time constant: the op's schema returns Tensor[] ([q] or
    [q, k]). Eager, torch.compile and opir.compile agree (fp32: Inductor's fused
    arithmetic rounds as eager does only in fp32)."""
    positions, q, k, _, cache, _, _ = _args(dtype=torch.float32)
    for f in (op,):
        model = _model(f)
        want = model(positions, q, k, cache)
        torch._dynamo.reset()
        for compiled in (
            torch.compile(model, fullgraph=True, dynamic=False),
            opir.compile(model, fullgraph=True, dynamic=False),
        ):
            got = compiled(positions, q, k, cache)
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g, w)


@pytest.mark.parametrize("key", [True, False])
def test_inputs_requiring_grad_get_the_inference_error(op, key):
    args = _args(key, dtype=torch.float32)
    args[1].requires_grad_()
    out = op(*args)
    assert isinstance(out, list) and len(out) == (2 if key else 1)
    with pytest.raises(RuntimeError, match="inference op"):
        out[0].sum().backward()
    with pytest.raises(RuntimeError, match="cannot be used with tensors that require grad"):
        op.maybe_inplace(*args)


def test_check_grid_covers_the_rotary_variants():
    """opir check: the generator's variants (key=None, GPT-J, partial, 3-D, GQA, fp32
    cache) are grid cases, and the donation cases put q and k in one buffer."""
    from opir.check.cases import grid_cases, inplace_cases

    labels = [c.label for c in grid_cases(rotary_embedding, full=False)]
    for variant in ("no key", "GPT-J style", "partial rotary", "3-D", "GQA heads", "fp32 cache"):
        assert f"bfloat16 {variant}" in labels
    cases = {c.label: c for c in inplace_cases(rotary_embedding, full=False)}
    q, k = cases["bfloat16 disjoint views of one buffer"].make()[1:3]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    assert k.data_ptr() == q.data_ptr() + q.shape[1] * q.element_size()
    q, k = cases["bfloat16 one tensor for every activation"].make()[1:3]
    assert k.data_ptr() == q.data_ptr()
    assert cases["bfloat16 no key"].make()[2] is None
