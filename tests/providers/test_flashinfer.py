"""The flashinfer provider against native (GPU with flashinfer only)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import opir
from opir.ops import fused_add_rms_norm, rms_norm
from opir.providers import flashinfer as provider


def test_unsupported_here_says_why():
    impl = rms_norm.impls["flashinfer"]
    if impl.supported:
        pytest.skip("flashinfer is usable on this machine")
    assert "flashinfer is not installed" in impl.reason or "CUDA" in impl.reason


def test_predicates_state_the_limits():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 64, device="cpu", dtype=torch.bfloat16)
        w = torch.empty(64, dtype=torch.bfloat16)
        # CPU tensors, fp32 weights, other biases, variance_size: all rejected
        assert provider.supports_rms_norm(x, w, 1e-6) is False
        assert provider.supports_rms_norm(x, w.float(), 1e-6) is False
        assert provider.supports_rms_norm(x, w, 1e-6, None, 0.5) is False
        assert provider.supports_fused_add_rms_norm(x, x, w, 1e-6, 8) is False
        assert provider.supports_all_reduce_rms_norm(x, None, w, 1e-6) is False


needs_flashinfer_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
    reason="needs a CUDA GPU and flashinfer (pip install 'opir[flashinfer]')",
)


def _args(op, dtype, tokens, hidden, weight_bias):
    args = op.sample_inputs(dtype=dtype, device="cuda", num_tokens=tokens, hidden_size=hidden)
    return (*args[:-1], None, weight_bias)  # (..., variance_size=None, weight_bias)


@pytest.mark.gpu
@needs_flashinfer_gpu
@pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm], ids=lambda op: op.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("tokens", "hidden"), [(0, 64), (1, 7), (7, 769), (64, 4096)])
@pytest.mark.parametrize("weight_bias", [0.0, 1.0], ids=["llama", "gemma"])
def test_matches_native_within_tolerance(op, dtype, tokens, hidden, weight_bias):
    """FlashInfer rounds once where the contract rounds twice; the tolerance covers it."""
    args = _args(op, dtype, tokens, hidden, weight_bias)
    expected = op.native(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    with op.set_priority(["flashinfer"]), opir.strict():
        got = op(*args)
    tol = op.tolerance(dtype)
    torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)
