"""The flashinfer provider's activation impls against native (GPU with flashinfer only)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import opir
from opir.ops import gelu_and_mul, silu_and_mul
from opir.providers.flashinfer import activation_impls as impls


def test_predicates_state_the_limits():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 64, dtype=torch.bfloat16)
        assert impls.supports_silu_and_mul(x) is False  # a CPU tensor
        assert impls.supports_gelu_and_mul(x, "tanh") is False
    if not silu_and_mul.impls["flashinfer"].supported:
        reason = silu_and_mul.impls["flashinfer"].reason
        assert "flashinfer is not installed" in reason or "CUDA" in reason


needs_flashinfer_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
    reason="needs a CUDA GPU and flashinfer (pip install 'opir[flashinfer]')",
)


@pytest.mark.gpu
@needs_flashinfer_gpu
def test_predicates_on_cuda():
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="cuda")
    assert impls.supports_silu_and_mul(x)
    assert not impls.supports_silu_and_mul(x.float())  # fp32
    assert not impls.supports_silu_and_mul(x[:, :62])  # not contiguous, rows of 124 bytes
    assert not impls.supports_gelu_and_mul(x, "fast")


@pytest.mark.gpu
@needs_flashinfer_gpu
@pytest.mark.parametrize(
    ("op", "extra"),
    [(silu_and_mul, ()), (gelu_and_mul, ("none",)), (gelu_and_mul, ("tanh",))],
    ids=["silu", "gelu", "gelu_tanh"],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("tokens", "d"), [(0, 64), (1, 8), (7, 1024), (64, 14336)])
def test_matches_native_within_tolerance(op, extra, dtype, tokens, d):
    """FlashInfer rounds once in fp32 where the contract rounds twice; the tolerance covers it."""
    (x,) = op.sample_inputs(dtype=dtype, device="cuda", num_tokens=tokens, hidden_size=d)[:1]
    args = (x, *extra)
    expected = op.native(*args)
    with op.set_priority(["flashinfer"]), opir.strict():
        got = op(*args)
    tol = op.tolerance(dtype)
    torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)
