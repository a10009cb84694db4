"""The flashinfer provider's fused norm -> fp8 quant impls against native (GPU with flashinfer).

FlashInfer computes the norm, weight and 1/scale in one fp32 chain and casts once;
the contract rounds the normalised value to x's dtype first. The fused ops' fp8
tolerance (one fp8 step) covers the difference (``opir.providers.flashinfer.quant_impls``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import opir
from opir.ops.quant import fused_add_rms_norm_quant, rms_norm_quant
from opir.providers.flashinfer import quant_impls as impls

FP8 = torch.float8_e4m3fn


def test_predicates_state_the_limits():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 64, dtype=torch.bfloat16)
        w = torch.empty(64, dtype=torch.bfloat16)
        s = torch.empty(1)
        assert impls.supports_rms_norm_quant(x, w, 1e-6, s, FP8) is False  # a CPU tensor
        assert impls.supports_fused_add_rms_norm_quant(x, x, w, 1e-6, s, FP8) is False
    if not rms_norm_quant.impls["flashinfer"].supported:
        reason = rms_norm_quant.impls["flashinfer"].reason
        assert "flashinfer is not installed" in reason or "CUDA" in reason


needs_flashinfer_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
    reason="needs a CUDA GPU and flashinfer (pip install 'opir[flashinfer]')",
)


@pytest.mark.gpu
@needs_flashinfer_gpu
def test_predicates_on_cuda():
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="cuda")
    w = torch.empty(64, dtype=torch.bfloat16, device="cuda")
    s = torch.ones(1, device="cuda")
    assert impls.supports_rms_norm_quant(x, w, 1e-6, s, FP8)
    assert not impls.supports_rms_norm_quant(x, w, 1e-6, s, torch.int8)  # fp8 e4m3fn only
    assert not impls.supports_rms_norm_quant(x, w, 1e-6, s, torch.float8_e4m3fnuz)
    assert not impls.supports_rms_norm_quant(x, w.float(), 1e-6, s, FP8)  # weight dtype
    assert not impls.supports_rms_norm_quant(x, w, 1e-6, s, FP8, 1.0)  # no Gemma variant
    assert not impls.supports_rms_norm_quant(x, None, 1e-6, s, FP8)
    assert not impls.supports_rms_norm_quant(x[:, :60], w[:60], 1e-6, s, FP8)  # strided


def _compare(op, got, expected):
    tol = op.tolerance(FP8)
    torch.testing.assert_close(got.float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


@pytest.mark.gpu
@needs_flashinfer_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("tokens", "hidden"), [(0, 64), (1, 8), (7, 1024), (64, 4096)])
def test_rms_norm_quant_matches_native_within_tolerance(dtype, tokens, hidden):
    args = rms_norm_quant.sample_inputs(
        dtype=dtype, device="cuda", num_tokens=tokens, hidden_size=hidden, quant_dtype=FP8
    )
    expected = rms_norm_quant.native(*args)
    with rms_norm_quant.set_priority(["flashinfer"]), opir.strict():
        got = rms_norm_quant(*args)
    assert got.dtype == FP8 and got.shape == expected.shape
    _compare(rms_norm_quant, got, expected)


@pytest.mark.gpu
@needs_flashinfer_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("tokens", "hidden"), [(1, 8), (7, 1024), (64, 4096)])
@pytest.mark.parametrize("donate", [False, True])
def test_fused_add_rms_norm_quant_matches_native_within_tolerance(dtype, tokens, hidden, donate):
    op = fused_add_rms_norm_quant
    args = op.sample_inputs(
        dtype=dtype, device="cuda", num_tokens=tokens, hidden_size=hidden, quant_dtype=FP8
    )
    expected = op.native(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    x, residual = args[0], args[1]
    before, x_before = residual.clone(), x.clone()
    with op.set_priority(["flashinfer"]), opir.strict():
        got = (op.maybe_inplace if donate else op)(*args)
    _compare(op, got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0)  # the rounded sum
    assert torch.equal(x, x_before)  # only the residual may be written
    if donate:
        assert got[1] is residual
    else:
        assert torch.equal(residual, before)
