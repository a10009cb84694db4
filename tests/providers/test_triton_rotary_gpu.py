"""The triton rotary kernels on a real GPU: the sync-free launch, CUDA graphs, real shapes.

The op-by-op grid is test_triton_rotary.py (on the GPU directly when there is
one, in the interpreter otherwise); here is what only a device shows.
"""

from __future__ import annotations

import pytest
import torch

import opir
from opir.ops import rotary as R

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]

TRITON = {op.name: ["triton"] for op in R.OPS}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("tokens", [1, 16, 2048])
def test_bit_identical_at_model_shapes(dtype, neox, tokens):
    """32 query heads, 8 key heads, head_size 128, fp32 and 16-bit caches."""
    for cache_dtype in (torch.float32, dtype):
        args = R.rotary_embedding.sample_inputs(
            dtype=dtype, device="cuda", num_tokens=tokens, hidden_size=128, num_heads=32,
            num_kv_heads=8, is_neox_style=neox, cache_dtype=cache_dtype, max_position=4096,
        )  # fmt: skip
        want = R.rotary_embedding.native(*args)
        with opir.priority(TRITON), opir.strict():
            got = R.rotary_embedding(*args)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_out_of_range_positions_give_nan_rows_without_a_sync():
    """On CUDA the launcher does not read the positions back (that would synchronise);
    the kernel never reads outside the cache and marks the token's rotated columns NaN."""
    args = list(R.rotary_embedding.sample_inputs(
        dtype=torch.bfloat16, device="cuda", num_tokens=8, hidden_size=128, max_position=32
    ))  # fmt: skip
    args[0] = args[0].clone()
    args[0][3] = 10**9
    with opir.priority(TRITON), opir.strict():
        q, k = R.rotary_embedding(*args)
    torch.cuda.synchronize()  # no illegal address
    assert q.view(8, -1, 128)[3].isnan().all() and k.view(8, -1, 128)[3].isnan().all()
    others = [i for i in range(8) if i != 3]
    assert q.view(8, -1, 128)[others].isfinite().all()


def test_cuda_graph_capture_and_replay():
    """In-place rotary and the fused q/k norm record into a graph and replay with new
    positions (no host sync in the launchers or predicates)."""
    args = R.qk_norm_rope.sample_inputs(
        dtype=torch.bfloat16, device="cuda", num_tokens=64, hidden_size=128, num_heads=32,
        num_kv_heads=8, max_position=4096,
    )  # fmt: skip
    positions, query, key, qw, kw, eps, hs, cache, neox, rd, bias = args
    q0, k0 = query.clone(), key.clone()

    def step():
        query.copy_(q0)
        key.copy_(k0)
        R.qk_norm_rope.maybe_inplace(positions, query, key, qw, kw, eps, hs, cache, neox, rd, bias)
        return R.rotary_embedding(positions, query, key, hs, cache, neox, rd)

    with torch.inference_mode(), opir.priority(TRITON), opir.strict():
        step()  # compile every kernel before capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        positions.copy_(torch.flip(positions, (0,)))
        graph.replay()
        torch.cuda.synchronize()
        expected = step()
    for got, want in zip(captured, expected, strict=True):
        assert torch.equal(got, want)


def test_hf_transposed_at_model_shapes():
    b, s, h, kh, d = 2, 256, 32, 8, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, s, h, d, device="cuda", generator=g).bfloat16().transpose(1, 2)
    k = torch.randn(b, s, kh, d, device="cuda", generator=g).bfloat16().transpose(1, 2)
    cos = torch.randn(b, s, d, device="cuda", generator=g).bfloat16()
    sin = torch.randn(b, s, d, device="cuda", generator=g).bfloat16()
    want = R.rotary_pos_emb.native(q, k, cos, sin, 1)
    with opir.priority(TRITON), opir.strict():
        got = R.rotary_pos_emb(q, k, cos, sin, 1)
    for gt, w in zip(got, want, strict=True):
        assert torch.equal(gt, w) and gt.stride() == w.stride()
