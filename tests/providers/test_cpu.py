"""The cpu provider against native over the issue's whole matrix."""

from __future__ import annotations

import itertools

import pytest
import torch
from conformance import assert_matches_native, non_collapsible_3d, run_provider, strided_rows

import opir
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOKENS = [0, 1, 7, 83, 4096]
HIDDEN = [8, 768, 769, 4096, 5125]
OPS = [rms_norm, fused_add_rms_norm, rms_norm_gated]


def _ids(v):
    return str(v).removeprefix("torch.")


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.parametrize(("tokens", "hidden"), list(itertools.product(TOKENS, HIDDEN)))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_matrix(op, dtype, tokens, hidden):
    args = op.sample_inputs(dtype=dtype, num_tokens=tokens, hidden_size=hidden)
    assert_matches_native(op, "cpu", args)


VARIANTS = {
    "no_weight": {"has_weight": False},
    "fp32_weight": {"weight_dtype": torch.float32},
}


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("hidden", [769, 4096])
def test_weight_variants(op, variant, dtype, hidden):
    args = op.sample_inputs(dtype=dtype, num_tokens=83, hidden_size=hidden, **VARIANTS[variant])
    assert_matches_native(op, "cpu", args)


@pytest.mark.parametrize("op", [rms_norm, fused_add_rms_norm], ids=lambda op: op.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("variance_size", [1, 64, 767, 769])
def test_variance_size(op, dtype, variance_size):
    args = op.sample_inputs(dtype=dtype, num_tokens=7, hidden_size=769, variance_size=variance_size)
    assert_matches_native(op, "cpu", args)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("group_size", [None, 8, 256, 1024])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("weight", ["same", "fp32", "none"])
def test_gated_groups(dtype, group_size, norm_before_gate, weight):
    kwargs = {"has_weight": weight != "none"}
    if weight == "fp32":
        kwargs["weight_dtype"] = torch.float32
    args = rms_norm_gated.sample_inputs(
        dtype=dtype,
        num_tokens=7,
        hidden_size=4096,
        group_size=group_size,
        norm_before_gate=norm_before_gate,
        **kwargs,
    )
    assert_matches_native(rms_norm_gated, "cpu", args)


def _with_activations(op, args, make_view):
    """Replace every activation-like tensor (x, residual, gate) with a strided view."""
    n = 2 if op is not rms_norm else 1
    return tuple(make_view(a) if i < n else a for i, a in enumerate(args))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("layout", ["strided_rows", "3d", "3d_non_collapsible"])
def test_layouts_without_copies(op, dtype, layout):
    args = op.sample_inputs(dtype=dtype, num_tokens=83, hidden_size=769)
    make_view = {
        "strided_rows": strided_rows,
        "3d": lambda t: t.reshape(1, *t.shape).expand(2, *t.shape).clone(),
        "3d_non_collapsible": non_collapsible_3d,
    }[layout]
    assert_matches_native(op, "cpu", _with_activations(op, args, make_view))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_fp16_sum_of_squares_does_not_overflow(op):
    args = op.sample_inputs(dtype=torch.float16, num_tokens=7, hidden_size=4096)
    big = (args[0].float() * 2e4).clamp(-6e4, 6e4).half()  # each square ~1e8 > fp16 max
    args = (big, *args[1:])
    out = run_provider(op, "cpu", args)
    first = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(first).all()
    assert_matches_native(op, "cpu", args)


def test_non_contiguous_weight():
    x, w, eps, _ = rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=7, hidden_size=768)
    strided_w = torch.stack([w, w], dim=1)[:, 0]
    assert not strided_w.is_contiguous()
    assert_matches_native(rms_norm, "cpu", (x, strided_w, eps, None))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("layout", ["contiguous", "strided_rows"])
def test_fused_add_overloads(dtype, layout):
    x, residual, w, eps, vs = fused_add_rms_norm.sample_inputs(
        dtype=dtype, num_tokens=83, hidden_size=769
    )
    if layout == "strided_rows":
        x, residual = strided_rows(x), strided_rows(residual, pad=3)
    functional = run_provider(fused_add_rms_norm, "cpu", (x, residual, w, eps, vs))
    assert all(o.data_ptr() not in (x.data_ptr(), residual.data_ptr()) for o in functional)
    x_ptr, residual_ptr = x.data_ptr(), residual.data_ptr()
    donated = run_provider(fused_add_rms_norm, "cpu", (x, residual, w, eps, vs), donate=True)
    assert (donated[0].data_ptr(), donated[1].data_ptr()) == (x_ptr, residual_ptr)
    torch.testing.assert_close(donated, functional, rtol=0, atol=0)  # bit-identical


def test_default_priority_on_this_machine_is_cpu_then_native():
    assert opir.platform().has_gpu is False
    for op in OPS:
        assert op.get_priority() == ["cpu", "native"]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_bf16_subnormal_outputs_are_kept(op):
    # A weight in bf16's subnormal range makes every output subnormal. torch keeps
    # subnormals when it rounds fp32 to bf16; AVX512-BF16's two-register convert
    # flushes them to zero, so a kernel storing through it would return zeros here.
    args = op.sample_inputs(dtype=torch.bfloat16, num_tokens=3, hidden_size=768)
    weight_at = 2 if op is fused_add_rms_norm else 1 + (op is rms_norm_gated)
    tiny = torch.full_like(args[weight_at], 1e-39)
    args = (*args[:weight_at], tiny, *args[weight_at + 1 :])
    out = run_provider(op, "cpu", args)
    first = out[0] if isinstance(out, tuple) else out
    assert (first != 0).any(), "subnormal bf16 outputs were flushed to zero"
    assert_matches_native(op, "cpu", args)
