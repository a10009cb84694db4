"""The triton provider on a real GPU: CUDA graph capture and replay, and the benchmark.

The kernel-by-kernel conformance grid is test_triton.py (it runs on the GPU
directly when there is one, in the interpreter otherwise).
"""

from __future__ import annotations

import pytest
import torch

import opir
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]


def test_platform_default_on_gpu_is_triton():
    for op in (rms_norm, fused_add_rms_norm, rms_norm_gated):
        assert op.get_priority()[0] == "triton"
        assert op.compile_priority().providers == ["native"]


def test_cuda_graph_capture_and_replay():
    """Dispatch and kernels record into a graph: no host sync, no allocation in predicates."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 4096, device="cuda", generator=g).bfloat16()
    residual = torch.randn(64, 4096, device="cuda", generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(4096, device="cuda", generator=g)).bfloat16()
    gate = torch.randn(64, 4096, device="cuda", generator=g).bfloat16()

    def step():
        y = rms_norm(x, w, 1e-6)
        out, res = fused_add_rms_norm(y, residual, w, 1e-6, None, 1.0)
        return rms_norm_gated(out, gate, w, 1e-6, 128), res

    with (
        torch.inference_mode(),
        opir.priority(
            {"rms_norm": ["triton"], "fused_add_rms_norm": ["triton"], "rms_norm_gated": ["triton"]}
        ),
        opir.strict(),
    ):
        step()  # warm up: compiles every kernel before capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        x.mul_(0.5)  # new input values, replayed by the same graph
        expected = [t.clone() for t in step()]
        graph.replay()
        torch.cuda.synchronize()
    for got, want in zip(captured, expected, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_kernels_faster_than_native_and_near_copy_bandwidth():
    from opir.bench import kernels

    results = kernels.run(
        tokens=(4096,), hidden=(4096,), providers=("native", "triton"), rounds=5, device="cuda"
    )
    for target in kernels.check_targets(results):
        print(target.description, "met" if target.met else target.failures)
    for r in results:
        print(r.op, r.variant, f"{r.of_copy('triton'):.0%} of copy, {r.speedup('triton'):.1f}x")
        assert r.speedup("triton") > 1.0
