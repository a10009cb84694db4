"""The cpu provider's activation kernels against the native functions.

bf16/fp16: bit-identical (torch.equal) on every input tried, including every
16-bit gate value and hostile layouts; fp32: within the op's tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conformance import run_provider
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from opir.ops import (
    fatrelu_and_mul,
    gelu_and_mul,
    gelu_and_mul_sparse,
    gelu_mul,
    mul_and_silu,
    silu_and_mul,
    silu_mul,
    swigluoai_and_mul,
)
from opir.ops.activations import OPS
from opir.providers.cpu import activation_impls, activation_kernels

SRC = str(Path(__file__).resolve().parents[2] / "src")
SIXTEEN = [torch.bfloat16, torch.float16]
MERGED_ARGS = {
    "silu_and_mul": [()],
    "mul_and_silu": [()],
    "gelu_and_mul": [("none",), ("tanh",)],
    "fatrelu_and_mul": [(0.0,), (0.1,)],
    "gelu_and_mul_sparse": [(1.6448536269514722, "none"), (0.3, "tanh")],
    "swigluoai_and_mul": [(1.702, 7.0), (1.3, 3.01)],
}
SEPARATE_ARGS = {"silu_mul": [()], "gelu_mul": [("none",), ("tanh",)]}


def _ids(v):
    return str(v).removeprefix("torch.")


def cpu(op, *args):
    return run_provider(op, "cpu", args)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    same = (got == want) | (got.isnan() & want.isnan())
    if not bool(same.all()):
        i = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{int((~same).sum())} of {got.numel()} elements differ, first at {i}: "
            f"{got[tuple(i)].item()!r} vs native {want[tuple(i)].item()!r}"
        )


def _every_16bit(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", SIXTEEN, ids=_ids)
@pytest.mark.parametrize(
    ("op", "args"), [(silu_and_mul, ()), (gelu_and_mul, ("none",)), (gelu_and_mul, ("tanh",))]
)
def test_every_gate_value(op, args, dtype):
    """All 65536 bit patterns as gate (up = 1, and up = 3 so the product rounds)."""
    g = _every_16bit(dtype)
    for up in (1.0, 3.0):
        x = torch.cat([g, torch.full_like(g, up)])[None]
        assert_same_bits(cpu(op, x, *args), op.native(x, *args))


@pytest.mark.parametrize("dtype", SIXTEEN, ids=_ids)
@pytest.mark.parametrize(("alpha", "limit"), [(1.702, 7.0), (1.0, 1e30)])
def test_swigluoai_every_gate_value(dtype, alpha, limit):
    """The fp32 fast path with fp64 fallback lanes, on every 16-bit gate value."""
    g = _every_16bit(dtype)
    x = torch.stack([g, torch.zeros_like(g)], dim=-1).reshape(1, -1)
    ext = activation_kernels.extension()
    ext.fallback_lanes(True)
    assert_same_bits(
        cpu(swigluoai_and_mul, x, alpha, limit), swigluoai_and_mul.native(x, alpha, limit)
    )
    assert 0 < ext.fallback_lanes(True) < g.numel()


def test_swigluoai_fallback_is_rare_on_model_like_inputs():
    x = (2 * torch.randn(64, 2 * 2048, generator=torch.Generator().manual_seed(0))).bfloat16()
    ext = activation_kernels.extension()
    ext.fallback_lanes(True)
    cpu(swigluoai_and_mul, x)
    assert ext.fallback_lanes(True) / (64 * 2048) < 0.03


LAYOUTS = ("contiguous", "strided_rows", "non_collapsible_3d", "transposed_leading")


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values as the 2-D x, in a layout whose last dim stays contiguous."""
    if layout == "contiguous":
        return x
    if layout == "strided_rows":
        wide = torch.zeros(x.shape[0], x.shape[1] + 5, dtype=x.dtype)
        wide[:, 2 : 2 + x.shape[1]] = x
        return wide[:, 2 : 2 + x.shape[1]]
    if layout == "non_collapsible_3d":
        # [2, T/2, C] whose two blocks are a padded row apart: no single row stride.
        t, c = x.shape
        if t % 2:
            return x.unsqueeze(0)
        buf = torch.zeros(2, t // 2 + 1, c, dtype=x.dtype)
        buf[:, : t // 2] = x.reshape(2, t // 2, c)
        return buf[:, : t // 2]
    # [T, 1, C] stored as [1, T, C] then transposed back: leading dims permuted.
    return x.unsqueeze(0).transpose(0, 1)


@settings(max_examples=12, deadline=None)
@given(
    tokens=st.integers(0, 9),
    d=st.integers(1, 300),
    dtype=st.sampled_from(SIXTEEN),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.5, 3.0, 40.0]),
)
def test_bit_identical_16bit(tokens, d, dtype, layout, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(tokens, 2 * d, generator=gen)).to(dtype)
    xl = _layout(x, layout)
    for op in (
        silu_and_mul,
        mul_and_silu,
        gelu_and_mul,
        fatrelu_and_mul,
        gelu_and_mul_sparse,
        swigluoai_and_mul,
    ):
        for args in MERGED_ARGS[op.name]:
            assert_same_bits(cpu(op, xl, *args), op.native(x, *args).reshape(*xl.shape[:-1], d))
    g, u = _layout(x[:, :d].contiguous(), layout), _layout(x[:, d:].contiguous(), "strided_rows")
    if g.dim() != u.dim():
        u = u.reshape(g.shape)
    for op in (silu_mul, gelu_mul):
        for args in SEPARATE_ARGS[op.name]:
            assert_same_bits(cpu(op, g, u, *args), op.native(g, u, *args))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("tokens", [0, 1, 37])
def test_fp32_within_tolerance(op, tokens):
    kw = {"num_tokens": tokens, "hidden_size": 1001}
    for args in (MERGED_ARGS | SEPARATE_ARGS)[op.name]:
        base = op.sample_inputs(dtype=torch.float32, **kw)
        tensors = base[:2] if op in (silu_mul, gelu_mul) else base[:1]
        tensors = tuple(8 * t for t in tensors)  # reach the tails of the activations
        got, want = cpu(op, *tensors, *args), op.native(*tensors, *args)
        tol = op.tolerance(torch.float32)
        torch.testing.assert_close(got, want, atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_3d_and_empty(op):
    for shape in [(2, 3, 64), (0, 64), (4, 0, 64), (3, 0)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        args = (x, x) if op in (silu_mul, gelu_mul) else (x,)
        extra = (MERGED_ARGS | SEPARATE_ARGS)[op.name][0]
        assert_same_bits(cpu(op, *args, *extra), op.native(*args, *extra))


@pytest.mark.parametrize(
    "op", [o for o in OPS if o not in (silu_mul, gelu_mul)], ids=lambda op: op.name
)
def test_kernel_rejects_odd_last_dim(op):
    with pytest.raises(ValueError, match=rf"{op.name}: x's last dim must be even.*got 9"):
        cpu(op, torch.randn(2, 9, dtype=torch.bfloat16), *MERGED_ARGS[op.name][0])


def test_kernel_rejects_bad_arguments():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"approximate must be one of \('none', 'tanh'\)"):
        cpu(gelu_and_mul, x, "erf")
    with pytest.raises(ValueError, match=r"approximate must be one of"):
        cpu(gelu_mul, x, x, "fast")
    with pytest.raises(ValueError, match="silu_mul: gate and up must have the same shape"):
        cpu(silu_mul, x, x[:, :4])
    with pytest.raises(ValueError, match="gelu_mul: gate and up must have the same shape"):
        cpu(gelu_mul, x, x.bfloat16())
    with pytest.raises(TypeError, match="threshold must be a float"):
        cpu(fatrelu_and_mul, x, "0.5")
    # pybind refuses these types; native's exception type, with the argument named
    with pytest.raises(ValueError, match=r"gelu_and_mul: approximate must be one of"):
        cpu(gelu_and_mul, x, 5)
    with pytest.raises(ValueError, match=r"gelu_and_mul_sparse: approximate must be one of"):
        cpu(gelu_and_mul_sparse, x, 1.0, None)
    with pytest.raises(TypeError, match="swigluoai_and_mul: alpha must be a float, got NoneType"):
        cpu(swigluoai_and_mul, x, None, 7.0)


def test_eager_calls_run_the_pybind_function_itself():
    """After the first call the impl's eager entry is the launcher: for tensor-only ops
    the pybind function, with no Python frame in between."""
    x = torch.randn(2, 8)
    cpu(silu_and_mul, x)
    assert silu_and_mul.impls["cpu"].eager is activation_kernels.extension().silu_and_mul


def _run_python(code: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_each_family_builds_on_its_own_first_call():
    """The first norm call loads only norms.cpp's extension, and an activation's only
    activations.cpp's (separate Providers of the one 'cpu' provider)."""
    out = _run_python(
        "import torch, opir\n"
        "from opir.providers.cpu import build\n"
        "x = torch.randn(2, 8)\n"
        "with opir.ops.rms_norm.set_priority(['cpu']):\n"
        "    opir.ops.rms_norm(x, None, 1e-6)\n"
        "print(sorted(build._modules))\n"
        "with opir.ops.silu_and_mul.set_priority(['cpu']):\n"
        "    opir.ops.silu_and_mul(x)\n"
        "print(sorted(build._modules))\n"
    )
    assert out.split("\n")[:2] == ["['norms']", "['activations', 'norms']"]


def test_a_failed_activations_build_withdraws_only_the_activations():
    out = _run_python(
        "import warnings, torch, opir\n"
        "from opir.providers.cpu import build\n"
        "build._failures['activations'] = build.ProviderBuildError('no compiler (test)')\n"
        "x = torch.randn(2, 8)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    y = opir.ops.silu_and_mul(x)\n"
        "assert torch.equal(y, opir.ops.silu_and_mul.native(x))\n"
        "print(len(caught), 'no compiler (test)' in str(caught[0].message))\n"
        "print([op.impls['cpu'].supported for op in opir.ops.activations.OPS])\n"
        "print(opir.ops.rms_norm.impls['cpu'].supported, sorted(build._modules))\n"
    )
    assert out.split("\n")[:3] == ["1 True", str([False] * 8), "True []"]


def test_last_dim_not_contiguous_is_not_the_kernels():
    x = torch.randn(16, 4).t()  # stride(-1) != 1: the predicate declines, native answers
    assert not activation_impls.supports_silu_and_mul(x)
    assert_same_bits(silu_and_mul(x), silu_and_mul.native(x))


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (silu_and_mul, ()),
        (mul_and_silu, ()),
        (gelu_and_mul, ("tanh",)),
        (fatrelu_and_mul, (0.5,)),
        (gelu_and_mul_sparse, (1.0, "none")),
        (swigluoai_and_mul, (1.702, 7.0)),
        (silu_mul, ()),
        (gelu_mul, ("none",)),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_custom_op_under_make_fx(op, args):
    """The traceable impl (what lowering records) is one opir_cpu node, real and fake."""
    impl = op.impls["cpu"].fn
    x = torch.randn(3, 2, 32, dtype=torch.bfloat16)
    tensors = (x[..., :16], x[..., 16:]) if op in (silu_mul, gelu_mul) else (x,)

    def f(*ts):
        return impl(*ts, *args)

    for mode in ("real", "fake"):
        gm = make_fx(f, tracing_mode=mode)(*tensors)
        assert f"torch.ops.opir_cpu.{op.name}.default" in gm.code
        assert_same_bits(gm(*tensors), op.native(*tensors, *args))
