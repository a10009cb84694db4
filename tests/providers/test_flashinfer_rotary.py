"""The flashinfer provider's ``rotary_embedding`` against native (GPU with flashinfer only).

FlashInfer rounds once from an fp32 cache where the contract rounds cos/sin, the
products and the sum to the query's dtype: held to the stated bound
``rotary_impls.rope_bound`` (4 unit roundoffs times ``|x1| + |x2|``), not to
bit-identity. Pass-through columns, the rest of a fused qkv buffer and the
in-place contract are exact.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import opir
from opir.ops import rotary as R
from opir.providers.flashinfer import rotary_impls as impls


def _args(device, dtype=torch.bfloat16, **kw):
    kw.setdefault("cache_dtype", torch.float32)
    kw.setdefault("hidden_size", 128)
    return R.rotary_embedding.sample_inputs(dtype=dtype, device=device, **kw)


def test_predicate_states_the_limits():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        args = _args("cpu")
        assert impls.supports_rotary_embedding(*args) is False  # CPU tensors
    if not R.rotary_embedding.impls["flashinfer"].supported:
        reason = R.rotary_embedding.impls["flashinfer"].reason
        assert "flashinfer is not installed" in reason or "CUDA" in reason


def test_rope_bound_is_zero_on_pass_through_columns():
    x = torch.ones(2, 2 * 16, dtype=torch.bfloat16)
    bound = impls.rope_bound(x, 16, 8).view(2, 2, 16)
    assert torch.equal(bound[..., 8:], torch.zeros(2, 2, 8))
    assert torch.allclose(bound[..., :8], torch.full((2, 2, 8), 4 * 2.0**-8 * 2))


needs_flashinfer_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
    reason="needs a CUDA GPU and flashinfer (pip install 'opir[flashinfer]')",
)


def _within_bound(got, want, x, head_size, rd):
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= impls.rope_bound(x, head_size, rd)).all()), float(diff.max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("tokens", [0, 1, 37])
@pytest.mark.parametrize("donate", [False, True], ids=["functional", "maybe_inplace"])
@pytest.mark.gpu
@needs_flashinfer_gpu
def test_matches_native_within_the_stated_bound(dtype, partial, tokens, donate):
    args = _args("cuda", dtype, num_tokens=tokens, num_heads=8, num_kv_heads=2, partial=partial)
    assert impls.supports_rotary_embedding(*args)
    want = R.rotary_embedding.native(*args)
    inputs = [args[1].clone(), args[2].clone()]
    call = R.rotary_embedding.maybe_inplace if donate else R.rotary_embedding
    with R.rotary_embedding.set_priority(["flashinfer"]), opir.strict():
        got = call(args[0], inputs[0], inputs[1], *args[3:])
    rd = args[4].shape[-1]
    for g, w, x in zip(got, want, (args[1], args[2]), strict=True):
        _within_bound(g, w, x, 128, rd)
    if donate:
        assert got[0] is inputs[0] and got[1] is inputs[1]


@pytest.mark.gpu
@needs_flashinfer_gpu
def test_fused_qkv_in_place_and_out_of_range_positions():
    """Column views of one qkv buffer rotate in place, v untouched; out-of-range
    positions are clamped into the cache (never read outside it)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens, nq, nk, hs = 16, 8, 2, 128
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs, device="cuda", generator=g).bfloat16()
    query, key = qkv[:, : nq * hs], qkv[:, nq * hs : (nq + nk) * hs]
    cache = R.cos_sin_cache(64, hs, device="cuda")
    positions = torch.randint(0, 64, (tokens,), device="cuda", generator=g)
    args = (positions, query, key, hs, cache, True, None)
    assert impls.supports_rotary_embedding(*args)
    want = R.rotary_embedding.native(positions, query.clone(), key.clone(), hs, cache, True)
    v = qkv[:, (nq + nk) * hs :].clone()
    x = (query.clone(), key.clone())
    with R.rotary_embedding.set_priority(["flashinfer"]), opir.strict():
        got = R.rotary_embedding.maybe_inplace(*args)
    assert got[0] is query and got[1] is key
    assert torch.equal(qkv[:, (nq + nk) * hs :], v)
    for gq, w, xx in zip(got, want, x, strict=True):
        _within_bound(gq, w, xx, hs, hs)
    bad = positions.clone()
    bad[0] = 10**6
    with R.rotary_embedding.set_priority(["flashinfer"]), opir.strict():
        out = R.rotary_embedding(bad, query, key, hs, cache, True)
    torch.cuda.synchronize()  # no illegal address: the read stayed inside the cache
    assert out[0].isfinite().all()


@pytest.mark.gpu
@needs_flashinfer_gpu
def test_predicate_on_cuda_refuses_what_flashinfer_cannot_do():
    args = list(_args("cuda"))
    assert impls.supports_rotary_embedding(*args)
    assert not impls.supports_rotary_embedding(*args[:4], args[4].bfloat16(), *args[5:])
    assert not impls.supports_rotary_embedding(*args[:5], False, args[6])  # GPT-J
    assert not impls.supports_rotary_embedding(args[0], args[1], None, *args[3:])
    assert not impls.supports_rotary_embedding(args[0], args[1].float(), args[2].float(),
                                               *args[3:])  # fmt: skip


STUB = r"""
import sys, types, torch
import opir  # first: its availability check looks for the real FlashInfer
calls = []

def _rotate(positions, query, key, head_size, cache, is_neox, out_q, out_k):
    assert is_neox and cache.dtype == torch.float32
    rd = cache.shape[-1]
    cos, sin = cache[positions].chunk(2, dim=-1)
    for x, out in ((query, out_q), (key, out_k)):
        heads = x.view(x.shape[0], -1, head_size).float()
        x1, x2 = heads[..., : rd // 2], heads[..., rd // 2 : rd]
        c, s = cos[:, None], sin[:, None]
        rot = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, heads[..., rd:]), dim=-1)
        out.view(x.shape[0], -1, head_size).copy_(rot)

def apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cache, is_neox=True):
    calls.append(("inplace", positions.clone()))
    _rotate(positions, query, key, head_size, cache, is_neox, query, key)

def apply_rope_with_cos_sin_cache(positions, query, key, head_size, cache, is_neox=True):
    calls.append(("functional", positions.clone()))
    q, k = torch.empty_like(query), torch.empty_like(key)
    _rotate(positions, query, key, head_size, cache, is_neox, q, k)
    return q, k

fi = types.ModuleType("flashinfer")
for name in ("activation", "norm", "rope"):
    setattr(fi, name, types.ModuleType("flashinfer." + name))
    sys.modules["flashinfer." + name] = getattr(fi, name)
fi.rope.apply_rope_with_cos_sin_cache_inplace = apply_rope_with_cos_sin_cache_inplace
fi.rope.apply_rope_with_cos_sin_cache = apply_rope_with_cos_sin_cache
sys.modules["flashinfer"] = fi

from opir.ops import rotary as R
from opir.providers.flashinfer import kernels, rotary_impls

args = list(R.rotary_embedding.sample_inputs(
    dtype=torch.bfloat16, device="cpu", num_tokens=5, hidden_size=64, num_heads=3,
    num_kv_heads=1, cache_dtype=torch.float32, max_position=16, partial=True))
args[0] = args[0].clone()
args[0][2] = 99  # out of range: clamped before FlashInfer sees it
query, key = args[1].clone(), args[2].clone()
out = kernels.rotary_embedding(args[0], query, key, *args[3:])
assert out[0] is query and out[1] is key and calls[-1][0] == "inplace"
assert int(calls[-1][1].max()) == 15 and int(calls[-1][1][2]) == 15
good = [0, 1, 3, 4]
want = R.rotary_embedding.native(args[0][good], args[1][good], args[2][good], *args[3:])
for got, w, x in ((query, want[0], args[1]), (key, want[1], args[2])):
    diff = (got[good].float() - w.float()).abs()
    assert bool((diff <= rotary_impls.rope_bound(x[good], 64, 32)).all())
q2, k2 = kernels.rotary_embedding_functional(*args)
assert calls[-1][0] == "functional" and torch.equal(q2, query) and torch.equal(k2, key)
empty = [a[:0] if i in (0, 1, 2) else a for i, a in enumerate(args)]
assert [t.shape[0] for t in kernels.rotary_embedding(*empty)] == [0, 0]
print("stub ok")
"""


def test_launchers_call_flashinfer_as_documented():
    """Without FlashInfer: a stub with its documented signatures (and the contract's
    math in fp32) checks the launchers' argument order, the clamped positions, the
    in-place and functional results and zero tokens."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("flashinfer is installed: the GPU tests call the real one")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    done = subprocess.run(
        [sys.executable, "-c", STUB], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "stub ok" in done.stdout, done.stderr[-3000:]
