"""GPU-only quantisation impls: the triton provider's ``scaled_mm`` (``torch._scaled_mm``,
fp8 on CUDA) and CUDA graph capture of the triton quant kernels.

The triton quant kernels themselves are proven op by op in
``test_triton_quant.py`` (in the interpreter on CPU, directly on a GPU).
"""

from __future__ import annotations

import pytest
import torch

import opir
from opir.ops import quant as Q

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FP8 = torch.float8_e4m3fn


def _fp8_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


needs_fp8 = pytest.mark.skipif(
    not _fp8_supported(), reason="needs a CUDA GPU of SM 8.9+ (fp8 GEMMs)"
)


@needs_fp8
@pytest.mark.parametrize("scales", ["tensor", "token"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 32), (33, 256, 96), (128, 4096, 1024)])
def test_scaled_mm_matches_native_within_tolerance(scales, out_dtype, m, k, n):
    op = Q.scaled_mm
    a, sa, b, sb, _, bias = op.sample_inputs(
        dtype=out_dtype, device="cuda", num_tokens=m, hidden_size=k, out_features=n,
        quant_dtype=FP8, scales=scales,
    )  # fmt: skip
    b = b.t().contiguous().t()  # column-major, as a [N, K] weight's .t() is
    if scales == "tensor" and out_dtype is torch.float32:
        bias = None  # cuBLASLt takes no bias with an fp32 output
    args = (a, sa, b, sb, out_dtype, bias)
    supported = op.impls["triton"].supports_args(*args)
    if scales == "token" and out_dtype is not torch.bfloat16:
        assert not supported  # rowwise scales: bf16 output only
        return
    assert supported
    expected = op.native(*args)
    with op.set_priority(["triton"]), opir.strict():
        got = op(*args)
    tol = op.tolerance(out_dtype)
    # fp32 accumulation of K fp8 products: relative error ~ K * 2**-24 of the magnitudes
    torch.testing.assert_close(got, expected, atol=tol.atol * max(1, k // 256), rtol=tol.rtol)


@needs_fp8
def test_scaled_mm_predicate_rejects_what_cublaslt_cannot_do():
    op = Q.scaled_mm
    a, sa, b, sb, out_dtype, bias = op.sample_inputs(
        dtype=torch.bfloat16, device="cuda", num_tokens=8, hidden_size=64, quant_dtype=FP8
    )
    ok = op.impls["triton"].supports_args
    assert not ok(a, sa, b.contiguous(), sb, out_dtype, bias)  # b row-major
    assert not ok(a[:, :40], sa, b[:40], sb, out_dtype, bias)  # K not a multiple of 16
    int8 = op.sample_inputs(dtype=torch.bfloat16, device="cuda", quant_dtype=torch.int8)
    assert not ok(*int8)


def test_triton_quant_kernels_capture_in_a_cuda_graph():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 4096, device="cuda", generator=g).bfloat16()
    r = torch.randn(64, 4096, device="cuda", generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(4096, device="cuda", generator=g)).bfloat16()
    scale = torch.tensor([0.02], device="cuda")
    ops = (Q.rms_norm_dynamic_quant, Q.fused_add_rms_norm_quant, Q.silu_and_mul_dynamic_quant,
           Q.dynamic_group_quant, Q.dynamic_quant)  # fmt: skip

    def step():
        q, s = Q.rms_norm_dynamic_quant(x, w, 1e-6, FP8)
        q2, res = Q.fused_add_rms_norm_quant(x, r, w, 1e-6, scale, torch.int8)
        q3, s3 = Q.silu_and_mul_dynamic_quant(x, FP8)
        q4, s4 = Q.dynamic_group_quant(x, FP8, 128, True, True)
        q5, s5 = Q.dynamic_quant(x, torch.int8, False)
        return q, s, q2, res, q3, s3, q4, s4, q5, s5

    with torch.inference_mode(), opir.priority({op.name: ["triton"] for op in ops}), opir.strict():
        step()  # compiles every kernel before capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        x.mul_(0.5)
        expected = [t.clone() for t in step()]
        graph.replay()
        torch.cuda.synchronize()
    for got, want in zip(captured, expected, strict=True):
        if got.element_size() == 1:  # int8 / fp8: compare the bytes
            got, want = got.view(torch.uint8), want.view(torch.uint8)
        assert torch.equal(got, want)
