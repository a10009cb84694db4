"""The activation family's native functions: the contract they state, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
from opir.ops.activations import OPS, activation, gelu_tanh_f64

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MERGED = [silu_and_mul, mul_and_silu, gelu_and_mul, fatrelu_and_mul, gelu_and_mul_sparse]
MERGED_ARGS = {
    "silu_and_mul": (),
    "mul_and_silu": (),
    "gelu_and_mul": ("tanh",),
    "fatrelu_and_mul": (0.25,),
    "gelu_and_mul_sparse": (1.6448536269514722, "none"),
    "swigluoai_and_mul": (1.702, 7.0),
}


def _ids(v):
    return str(v).removeprefix("torch.")


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _x(dtype, tokens=5, d=67, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(tokens, 2 * d, generator=gen)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_activation_is_fp64_rounded_once_then_multiplied(dtype):
    x = _x(dtype)
    g, u = x[:, :67], x[:, 67:]
    assert _bits_equal(silu_and_mul.native(x), F.silu(g.double()).to(dtype) * u)
    assert _bits_equal(mul_and_silu.native(x), g * F.silu(u.double()).to(dtype))
    gelus = {"none": F.gelu(g.double()), "tanh": gelu_tanh_f64(g.double())}
    for approx, act in gelus.items():
        want = act.to(dtype) * u
        assert _bits_equal(gelu_and_mul.native(x, approx), want)
        assert _bits_equal(gelu_mul.native(g, u, approx), want)
    assert _bits_equal(silu_mul.native(g, u), silu_and_mul.native(x))


def _every_16bit(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)


def _same_or_both_nan(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many elements differ (NaN equals NaN)."""
    return int(((a != b) & ~(a.isnan() & b.isnan())).sum())


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_ids)
def test_activation_layout_independent_on_every_16bit_value(kind, dtype):
    """Every 16-bit gate value gives the same bits whatever its layout or position.

    The native computes on a contiguous fp64 copy, but ATen's elementwise loop runs a
    vectorised path (Sleef) over most of it and a scalar path (libm) over the last
    < 2 vectors: where the two fp64 results differ enough to change the rounding to T,
    the result depends on where a value sits. Torch's fp64 ``gelu(approximate="tanh")``
    did (``0.5 g (1 + tanh y)`` cancels below g ~ -5; the vector tanh is -1 from |y| >
    18.71, the scalar one from 19.06): 2 bf16 values. Pieces of 7 elements run
    entirely in the scalar loop.
    """
    g = _every_16bit(dtype)
    want = activation(g, kind)  # one contiguous call: the vectorised loop
    square = g.reshape(256, 256)
    wide = torch.zeros(65536, 3, dtype=dtype)
    wide[:, 1] = g
    got = {
        "strided": activation(wide[:, 1], kind),
        "transposed_copy": activation(square.t().contiguous().t(), kind).reshape(-1),
        "transposed": activation(square.t(), kind).t().reshape(-1),
        "pieces_of_7": torch.cat([activation(c, kind) for c in g.split(7)]),
    }
    differ = {name: _same_or_both_nan(out, want) for name, out in got.items()}
    assert differ == dict.fromkeys(got, 0), differ


def test_gelu_tanh_is_torchs_function_without_the_cancellation():
    """``g / (1 + exp(-2y))`` is ``F.gelu(g, approximate="tanh")`` where the latter is
    well-conditioned, and keeps the tiny values torch's fp64 tanh form loses to 0."""
    g = torch.linspace(-4.0, 10.0, 28001, dtype=torch.float64)
    torch.testing.assert_close(gelu_tanh_f64(g), F.gelu(g, approximate="tanh"), rtol=1e-9, atol=0)
    tail = torch.tensor([-7.25, -8.0, -10.0], dtype=torch.float64)
    y = 0.7978845608028654 * (tail + 0.044715 * tail**3)
    torch.testing.assert_close(gelu_tanh_f64(tail), tail * torch.exp(2 * y), rtol=1e-12, atol=0)
    assert F.gelu(tail, approximate="tanh").eq(0).all()  # torch's form: all lost
    special = torch.tensor([0.0, -0.0, float("inf"), -3e38, 3e38, float("-inf"), float("nan")])
    got, torchs = gelu_tanh_f64(special.double()), F.gelu(special.double(), approximate="tanh")
    assert _same_or_both_nan(got, torchs) == 0
    assert got[:-2].signbit().equal(torchs[:-2].signbit())  # -0.0 stays -0.0


def test_contract_differs_from_torch_bf16_activation_somewhere():
    # The reason for the contract: torch's own bf16 GELU rounds differently on some inputs.
    g = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    g = g[g.float().isfinite() & (g.float().abs() < 8)]
    ours = F.gelu(g.double()).to(torch.bfloat16)
    theirs = F.gelu(g)
    assert not torch.equal(ours, theirs)  # the contract is not "whatever F.gelu(bf16) gives"


def _layouts(x: torch.Tensor) -> list[torch.Tensor]:
    wide = torch.zeros(x.shape[0], x.shape[1] + 11, dtype=x.dtype)
    wide[:, 3 : 3 + x.shape[1]] = x
    transposed = x.t().contiguous().t()  # same values, column-major
    three_d = torch.stack([x, x]).transpose(0, 1)  # leading dims that do not collapse
    return [x, wide[:, 3 : 3 + x.shape[1]], transposed, three_d[:, 1]]


@pytest.mark.parametrize("op", [*MERGED, swigluoai_and_mul], ids=lambda op: op.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_layout_independent(op, dtype):
    x = _x(dtype, tokens=9, d=131)
    args = MERGED_ARGS[op.name]
    outs = [op.native(v, *args) for v in _layouts(x)]
    for out in outs[1:]:
        assert _bits_equal(out, outs[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_separate_layout_independent(dtype):
    x = _x(dtype, tokens=9, d=131)
    g, u = x[:, :131], x[:, 131:]
    want = silu_mul.native(g.contiguous(), u.contiguous())
    assert _bits_equal(silu_mul.native(g.t().contiguous().t(), u), want)
    assert _bits_equal(gelu_mul.native(g, u), gelu_mul.native(g.contiguous(), u.contiguous()))


def test_sparse_is_vllms_definition_in_fp64():
    x = _x(torch.float64, tokens=6, d=50)
    g, u = x[:, :50], x[:, 50:]
    mean = torch.mean(g, dim=-1, keepdim=True)
    std = torch.std(g, dim=-1, keepdim=True, unbiased=False)
    for approx in ("none", "tanh"):
        want = F.gelu(F.relu(g - (mean + std * 1.3)), approximate=approx) * u
        torch.testing.assert_close(gelu_and_mul_sparse.native(x, 1.3, approx), want)
    # About 90% of a row is below mean + 1.28 std: the op is sparse.
    assert (gelu_and_mul_sparse.native(x, 1.3) == 0).float().mean() > 0.7


def test_swigluoai_interleaved_clamped_grouping():
    x = _x(torch.float64, tokens=4, d=40) * 4
    g, u = x[..., ::2].clamp(max=7.0), x[..., 1::2].clamp(-7.0, 7.0)
    want = (u + 1) * (g * torch.sigmoid(g * 1.702))
    torch.testing.assert_close(swigluoai_and_mul.native(x), want)
    xb = x.to(torch.bfloat16)
    gb, ub = xb[..., ::2].double().clamp(max=7.0), xb[..., 1::2].clamp(-7.0, 7.0)
    glu = (gb * torch.sigmoid(gb * 1.702)).to(torch.bfloat16)
    assert _bits_equal(swigluoai_and_mul.native(xb), (ub + 1) * glu)


def test_fatrelu_compares_exactly():
    g = torch.tensor([0.1, 0.0996, -1.0, float("nan")], dtype=torch.bfloat16)
    x = torch.cat([g, torch.ones(4, dtype=torch.bfloat16)])
    out = fatrelu_and_mul.native(x, 0.1)
    # bf16(0.1) = 0.10009765625 > 0.1: kept, although it equals the threshold rounded to bf16.
    assert out.tolist()[:3] == [g[0].item(), 0.0, 0.0] and out[3].item() == 0.0


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("shape", [(0, 8), (2, 3, 8), (8,)])
def test_shapes(op, shape):
    x = torch.randn(shape, dtype=torch.bfloat16)
    if op in (silu_mul, gelu_mul):
        out = op.native(x, x)
        assert out.shape == x.shape
    else:
        out = op.native(x, *MERGED_ARGS[op.name])
        assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == x.dtype


@pytest.mark.parametrize("op", [*MERGED, swigluoai_and_mul], ids=lambda op: op.name)
def test_odd_last_dim_names_op(op):
    with pytest.raises(ValueError, match=rf"{op.name}: x's last dim must be even.*got 7"):
        op(torch.randn(3, 7), *MERGED_ARGS[op.name])


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_non_float_rejected(op):
    x = torch.ones(3, 8, dtype=torch.int32)
    args = (x,) if op in (silu_mul, gelu_mul) else MERGED_ARGS[op.name]
    with pytest.raises(ValueError, match=rf"{op.name}: .*floating-point"):
        op(x, *args)


def test_bad_approximate():
    x = torch.randn(3, 8)
    for call in (
        lambda: gelu_and_mul(x, "fast"),
        lambda: gelu_mul(x, x, "erf"),
        lambda: gelu_and_mul_sparse(x, 1.0, "Tanh"),
    ):
        with pytest.raises(ValueError, match=r"approximate must be one of \('none', 'tanh'\)"):
            call()


def test_mismatched_gate_up():
    g = torch.randn(3, 8)
    for up in (torch.randn(3, 9), g.to(torch.bfloat16), torch.randn(1, 8)):
        with pytest.raises(ValueError, match="silu_mul: gate and up must have the same shape"):
            silu_mul(g, up)
