"""The quant ops' native functions: every contract detail they pin, fused = unfused bit for
bit, scaled_mm's exactness, and bad input (docs/quantization.md has the table)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import opir
from opir.ops import (
    all_reduce_rms_norm,
    all_reduce_rms_norm_quant,
    dynamic_group_quant,
    dynamic_quant,
    fused_add_rms_norm,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm,
    rms_norm_dynamic_quant,
    rms_norm_group_quant,
    rms_norm_quant,
    scaled_mm,
    silu_and_mul,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.ops.quant import MIN_SCALE, QUANT_MAX, round_up_pow2

FP8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]
QDTYPES = [torch.int8, *FP8]
XDTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAN, INF = float("nan"), float("inf")


def _ids(v):
    return str(v).removeprefix("torch.")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())


def _x(shape, dtype=torch.float32, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(*shape, generator=g)).to(dtype)


def _formula(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The contract written out: f32(x) * f32(1/scale), clamp, (int8: RNE, NaN -> 0), cast."""
    inv = torch.tensor(1.0) / scale.float()
    y = x.float() * inv
    if dtype == torch.int8:
        y = torch.nan_to_num(torch.round(y).clamp(-128, 127), nan=0.0)
        return y.to(torch.int8)
    m = QUANT_MAX[dtype]
    return y.clamp(-m, m).to(dtype)


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


# --- the quantisation formula -----------------------------------------------------------


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("xdtype", XDTYPES, ids=_ids)
def test_static_is_the_stated_formula(qdtype, xdtype):
    x = _x((9, 130), xdtype)
    scale = _t(6.0 / QUANT_MAX[qdtype])
    q = static_quant(x, scale, qdtype)
    assert _same(q, _formula(x, scale, qdtype))
    assert q.shape == x.shape and q.dtype == qdtype


def test_multiplies_by_the_reciprocal_not_divides():
    scale = _t(0.1)  # 1/0.1 is not an fp32 number: x * (1/s) and x / s round differently
    base = (torch.arange(-127, 127, dtype=torch.float32) + 0.5) * scale  # next to the ties
    x = torch.cat([base, torch.nextafter(base, base + 1), torch.nextafter(base, base - 1)])
    q = static_quant(x, scale, torch.int8)
    by_mul = torch.round(x * (1 / scale)).to(torch.int8)
    by_div = torch.round(x / scale).to(torch.int8)
    assert torch.equal(q, by_mul)
    assert (q != by_div).sum() > 10  # the choice is visible (vLLM's int8 kernels multiply)
    assert static_quant(_t(-12.149999618530273), scale, torch.int8).item() == -122  # / gives -121


def test_int8_rounds_half_to_even_like_vllm():
    x = _t(0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5)
    q = static_quant(x, _t(1.0), torch.int8)
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 126, -128]  # vLLM's CPU kernel gives the same


@pytest.mark.parametrize(
    ("qdtype", "big", "small"),
    [
        (torch.int8, 127, -128),
        (torch.float8_e4m3fn, 448.0, -448.0),
        (torch.float8_e4m3fnuz, 224, -224),
    ],
    ids=["int8", "e4m3fn", "e4m3fnuz"],
)
def test_out_of_range_saturates_before_the_cast(qdtype, big, small):
    # torch's CPU cast gives NaN for fnuz past 240 and garbage for int8: the clamp decides
    x = _t(1e4, -1e4, 500.0, -500.0, 241.0, INF, -INF)
    q = static_quant(x, _t(1.0), qdtype).float()
    assert q.tolist()[:2] + q.tolist()[5:] == [big, small, big, small]
    assert q[2:4].tolist() == [big, small]
    assert q[4].item() == min(big, 240.0)  # 241 rounds to e4m3fn's 240; saturates otherwise


def test_fnuz_max_is_224_not_240():
    q, s = dynamic_quant(_t(1.0, -3.0, 2.0).reshape(1, 3), torch.float8_e4m3fnuz)
    assert s.item() == pytest.approx(3.0 / 224)
    assert q.float().abs().max().item() == 224.0


def test_fnuz_has_no_negative_zero():
    q = static_quant(_t(-0.0, -1e-9), _t(1.0), torch.float8_e4m3fnuz)
    assert q.view(torch.uint8).tolist() == [0, 0]  # 0x80 would be NaN in fnuz


# --- dynamic scales ---------------------------------------------------------------------


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("xdtype", XDTYPES, ids=_ids)
def test_dynamic_per_token_scale_and_values(qdtype, xdtype):
    x = _x((3, 5, 96), xdtype)
    q, s = dynamic_quant(x, qdtype)
    absmax = x.float().abs().amax(-1, keepdim=True)
    assert s.dtype == torch.float32 and s.shape == (3, 5, 1)
    assert torch.equal(s, torch.clamp(absmax / QUANT_MAX[qdtype], min=MIN_SCALE[qdtype]))
    assert _same(q, _formula(x, s, qdtype))
    assert q.float().abs().max() <= QUANT_MAX[qdtype]  # int8 dynamic never gives -128


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_dynamic_per_tensor_scale(qdtype):
    x = _x((4, 64))
    q, s = dynamic_quant(x, qdtype, per_token=False)
    assert s.shape == (1,) and s.item() == (x.abs().max() / QUANT_MAX[qdtype]).item()
    assert _same(q, _formula(x, s, qdtype))


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_all_zero_rows_get_the_minimum_scale_not_zero(qdtype):
    x = torch.zeros(3, 64)
    x[1] = _x((64,))
    q, s = dynamic_quant(x, qdtype)
    minimum = (torch.tensor(1.0) / torch.tensor(QUANT_MAX[qdtype] * 512)).item()
    assert MIN_SCALE[qdtype] == minimum
    assert s[0].item() == s[2].item() == minimum  # vLLM's int8 kernel gives 0 here
    assert (q[0].float() == 0).all() and (q[2].float() == 0).all()
    assert torch.isfinite(q.float() * s).all()
    _, st_ = dynamic_quant(torch.zeros(2, 8), qdtype, per_token=False)
    assert st_.item() == minimum


def test_tiny_rows_clamp_to_the_minimum_scale():
    x = torch.full((1, 8), 1e-7)
    q, s = dynamic_quant(x, torch.int8)
    assert s.item() == MIN_SCALE[torch.int8]
    assert q.tolist() == [[0] * 8]  # 1e-7 / 1.5e-5 rounds to 0


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_scale_ub_clamps_the_absmax_first(qdtype):
    x = _t(1.0, -50.0, 3.0, INF).reshape(2, 2)
    ub = _t(10.0)
    q, s = dynamic_quant(x, qdtype, True, ub)
    m = QUANT_MAX[qdtype]
    assert s.flatten().tolist() == [torch.tensor(10.0 / m).item()] * 2
    low = -128 if qdtype == torch.int8 else -m  # int8 clamps to [-128, 127]
    assert q.float()[0, 1].item() == low and q.float()[1, 1].item() == m  # saturated


# --- non-finite inputs --------------------------------------------------------------------


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_static_nan_is_nan_in_fp8_and_zero_in_int8(qdtype):
    q = static_quant(_t(NAN, 1.0), _t(1.0), qdtype)
    if qdtype == torch.int8:
        assert q.tolist() == [0, 1]
    else:
        assert q.float()[0].isnan() and q.float()[1].item() == 1.0


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_a_non_finite_row_dequantises_to_nan_and_only_that_row(qdtype, bad):
    x = _x((3, 16))
    x[1, 5] = bad
    q, s = dynamic_quant(x, qdtype)
    assert s[1].isnan() if bad != bad else s[1].item() == INF  # NaN, or +inf for ±inf
    assert (q.float()[1] * s[1]).isnan().all()  # never finite garbage
    assert torch.isfinite(s[[0, 2]]).all()
    clean = x[[0, 2]]
    assert _same(q[[0, 2]], dynamic_quant(clean, qdtype)[0])
    if qdtype == torch.int8:
        assert (q[1] == 0).all()
    elif bad != bad:
        assert q.float()[1].isnan().all()
    else:  # scale inf: finite values give 0, the inf itself NaN
        row = q.float()[1]
        assert row[5].isnan() and (row[torch.arange(16) != 5] == 0).all()


def test_a_non_finite_group_spoils_only_its_group():
    x = _x((2, 256))
    x[0, 130] = NAN
    q, s = dynamic_group_quant(x, torch.float8_e4m3fn, 128)
    assert s[0, 1].isnan() and torch.isfinite(s[0, 0]) and torch.isfinite(s[1]).all()
    assert q.float()[0, 128:].isnan().all() and not q.float()[0, :128].isnan().any()


def test_per_tensor_nan_spoils_the_tensor():
    x = _x((2, 8))
    x[1, 1] = NAN
    q, s = dynamic_quant(x, torch.int8, per_token=False)
    assert s.isnan().all() and (q == 0).all()


# --- groups, layouts, ue8m0 ---------------------------------------------------------------


@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_group_scales_are_per_group(group_size, qdtype):
    x = _x((2, 3, 256), torch.bfloat16)
    q, s = dynamic_group_quant(x, qdtype, group_size)
    g = 256 // group_size
    assert s.shape == (2, 3, g) and s.dtype == torch.float32 and s.is_contiguous()
    xg = x.float().unflatten(-1, (g, group_size))
    for j in range(g):
        qj, sj = dynamic_quant(xg[..., j, :].to(x.dtype), qdtype)
        assert torch.equal(s[..., j : j + 1], sj)
        assert _same(q[..., j * group_size : (j + 1) * group_size], qj)


def test_column_major_scales_storage():
    x = _x((5, 384))
    q, s = dynamic_group_quant(x, torch.float8_e4m3fn, 128, column_major_scales=True)
    q2, s2 = dynamic_group_quant(x, torch.float8_e4m3fn, 128)
    assert _same(q, q2) and torch.equal(s, s2)
    assert s.shape == (5, 3) and s.stride() == (1, 5)  # storage [K/g, M] viewed (M, K/g)
    assert s.t().is_contiguous()
    x3 = _x((2, 3, 128))
    _, s3 = dynamic_group_quant(x3, torch.int8, 64, column_major_scales=True)
    assert s3.shape == (2, 3, 2) and s3.stride() == (3, 1, 6)
    _, s0 = dynamic_group_quant(torch.zeros(0, 128), torch.int8, 64, True)
    assert s0.shape == (0, 2)


def test_ue8m0_rounds_the_scale_up_to_a_power_of_two():
    k = torch.arange(-20, 20, dtype=torch.float32)
    exact = torch.exp2(k)
    assert torch.equal(round_up_pow2(exact), exact)  # powers of two stay
    just_above = exact * (1 + 2.0**-23)
    assert torch.equal(round_up_pow2(just_above), exact * 2)  # log2f-based rounding gives k
    just_below = exact * (1 - 2.0**-24)
    assert torch.equal(round_up_pow2(just_below), exact)
    assert round_up_pow2(_t(INF, NAN))[0] == INF and round_up_pow2(_t(NAN)).isnan().all()


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
def test_ue8m0_group_quant(qdtype):
    x = _x((4, 256))
    q, s = dynamic_group_quant(x, qdtype, 128, scale_ue8m0=True)
    _, plain = dynamic_group_quant(x, qdtype, 128)
    mant, _ = torch.frexp(s)
    assert (mant == 0.5).all() and (s >= plain).all() and (s < 2 * plain).all()
    assert _same(q, _formula(x.unflatten(-1, (2, 128)), s.unsqueeze(-1), qdtype).flatten(-2))


def test_zero_rows_and_one_dim():
    for fn in (
        lambda x: dynamic_quant(x, torch.int8),
        lambda x: dynamic_quant(x, torch.int8, False),
        lambda x: dynamic_group_quant(x, torch.int8, 64),
    ):
        q, s = fn(torch.zeros(0, 128))
        assert q.shape == (0, 128) and s.shape[0] in (0, 1)
    q, s = dynamic_quant(_x((64,)), torch.float8_e4m3fn)
    assert q.shape == (64,) and s.shape == (1,)
    q, s = dynamic_group_quant(_x((128,)), torch.int8, 64, True)
    assert s.shape == (2,)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 70),
    spread=st.floats(1e-3, 1e4),
    seed=st.integers(0, 2**16),
)
def test_int8_dynamic_error_is_at_most_half_a_step(rows, cols, spread, seed):
    x = _x((rows, cols), seed=seed, spread=spread)
    q, s = dynamic_quant(x, torch.int8)
    y = x * (torch.tensor(1.0) / s)
    assert ((y - q.float()).abs() <= 0.5).all()
    assert q.abs().max() <= 127


# --- fused = unfused, bit for bit ---------------------------------------------------------


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("xdtype", XDTYPES, ids=_ids)
def test_fused_ops_are_the_composition_bit_for_bit(qdtype, xdtype):
    # with native (a kernel's own rms may differ in the last bit: op tolerance)
    x, r = _x((5, 256), xdtype, 1, 1.0), _x((5, 256), xdtype, 2, 1.0)
    w = (1 + 0.1 * _x((256,), seed=3)).to(xdtype)
    sc = _t(4.0 / QUANT_MAX[qdtype])
    ub = _t(3.0)
    for bias in (0.0, 1.0):
        y = rms_norm.native(x, w, 1e-6, None, bias)
        assert _same(
            rms_norm_quant.native(x, w, 1e-6, sc, qdtype, bias), static_quant.native(y, sc, qdtype)
        )
        for a, b in zip(
            rms_norm_dynamic_quant.native(x, w, 1e-6, qdtype, ub, bias),
            dynamic_quant.native(y, qdtype, True, ub),
            strict=True,
        ):
            assert _same(a, b)
        for a, b in zip(
            rms_norm_group_quant.native(x, w, 1e-6, qdtype, 64, True, True, bias),
            dynamic_group_quant.native(y, qdtype, 64, True, True),
            strict=True,
        ):
            assert _same(a, b) and a.stride() == b.stride()
        out, res = fused_add_rms_norm.native(x, r, w, 1e-6, None, bias)
        got = fused_add_rms_norm_quant.native(x, r, w, 1e-6, sc, qdtype, bias)
        assert _same(got[0], static_quant.native(out, sc, qdtype)) and _same(got[1], res)
        got = fused_add_rms_norm_dynamic_quant.native(x, r, w, 1e-6, qdtype, None, bias)
        qd, sd = dynamic_quant.native(out, qdtype)
        assert _same(got[0], qd) and _same(got[1], sd) and _same(got[2], res)
        got = red, red_res = all_reduce_rms_norm.native(x, r, w, 1e-6, None, bias)
        got = all_reduce_rms_norm_quant.native(x, r, w, 1e-6, sc, qdtype, None, bias)
        assert _same(got[0], static_quant.native(red, sc, qdtype)) and _same(got[1], red_res)
    act = silu_and_mul.native(x)
    assert _same(silu_and_mul_quant.native(x, sc, qdtype), static_quant.native(act, sc, qdtype))
    for a, b in zip(
        silu_and_mul_dynamic_quant.native(x, qdtype, ub),
        dynamic_quant.native(act, qdtype, True, ub),
        strict=True,
    ):
        assert _same(a, b)


def test_fused_intermediate_is_rounded_to_x_dtype():
    # the fused op does not quantise the fp32 normalised value: bf16 first, as unfused
    x = _x((4, 64), torch.bfloat16, spread=1.0)
    sc = _t(1 / 448)
    y32 = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    fused = rms_norm_quant(x, None, 1e-6, sc, torch.float8_e4m3fn)
    assert _same(fused, static_quant(y32.to(torch.bfloat16), sc, torch.float8_e4m3fn))


# --- scaled_mm ----------------------------------------------------------------------------


def _dequant_ref(a, sa, b, sb, out_dtype, bias=None):
    """Dequantise in fp64 elementwise (block scales expanded), matmul in fp64."""
    m, k = a.shape
    n = b.shape[1]
    if sa.shape == (m, -(-k // 128)) and sa.shape not in ((1,), (m, 1)):
        sa = sa.repeat_interleave(128, 1)[:, :k]
        sb = sb.repeat_interleave(128, 0)[:k].repeat_interleave(128, 1)[:, :n]
    out = (a.double() * sa.double()) @ (b.double() * sb.double())
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=_ids)
@pytest.mark.parametrize("scales", ["tensor", "token", "block"])
@pytest.mark.parametrize("out_dtype", XDTYPES, ids=_ids)
def test_scaled_mm_matches_dequantised_fp64(qdtype, scales, out_dtype):
    args = scaled_mm.sample_inputs(
        dtype=out_dtype,
        num_tokens=5,
        hidden_size=300,
        out_features=200,
        quant_dtype=qdtype,
        scales=scales,
    )
    got = scaled_mm.native(*args)
    assert got.shape == (5, 200) and got.dtype == out_dtype
    want = _dequant_ref(*args)
    if out_dtype == torch.float32:  # elementwise dequantisation rounds in fp64: ~1e-16
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    else:
        torch.testing.assert_close(got, want, atol=0, rtol=2**-7)


def test_scaled_mm_int8_is_exact_for_huge_k():
    k = 1 << 16
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = torch.full((k, 3), -128, dtype=torch.int8)
    got = scaled_mm.native(a, _t(1.0), b, _t(1.0), torch.float32)
    assert (got == float(127 * -128 * k)).all()  # 2**30 - ... exactly, no fp32 accumulate


def test_scaled_mm_takes_a_transposed_weight_and_bias():
    w = torch.randint(-127, 128, (6, 32), dtype=torch.int8)  # [N, K]
    a = torch.randint(-127, 128, (3, 32), dtype=torch.int8)
    sa, sb = torch.rand(3, 1) + 0.1, torch.rand(1, 6) + 0.1
    bias = torch.randn(6)
    got = scaled_mm.native(a, sa, w.t(), sb, torch.float32, bias)
    want = ((a.double() @ w.t().double()) * sa.double() * sb.double() + bias.double()).float()
    assert torch.equal(got, want)


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    x = _x((4, 128))
    s = _t(0.1)
    w = torch.ones(128)
    a8 = torch.zeros(4, 128, dtype=torch.int8)
    b8 = torch.zeros(128, 8, dtype=torch.int8)
    sa, sb = torch.ones(4, 1), torch.ones(1, 8)
    return [
        ("dtype must be one of", static_quant, (x, s, torch.float16)),
        ("dtype must be one of", static_quant, (x, s, torch.float8_e5m2)),
        ("dtype must be one of", dynamic_quant, (x, "int8")),
        (
            "x must be a float32, bfloat16 or float16",
            static_quant,
            (x.to(torch.int32), s, torch.int8),
        ),
        ("x must be a float32", dynamic_quant, (a8, torch.int8)),
        ("x must have at least one dimension", dynamic_quant, (torch.tensor(1.0), torch.int8)),
        ("scale must be float32", static_quant, (x, s.double(), torch.int8)),
        ("scale must be float32", static_quant, (x, s.half(), torch.int8)),
        ("shape \\[1\\]", static_quant, (x, torch.ones(4, 1), torch.int8)),
        ("shape \\[1\\]", rms_norm_quant, (x, w, 1e-6, torch.ones(2), torch.int8)),
        ("scale_ub must be float32", dynamic_quant, (x, torch.int8, True, s.double())),
        ("group_size must be 64 or 128", dynamic_group_quant, (x, torch.int8, 32)),
        ("group_size must be 64 or 128", dynamic_group_quant, (x, torch.int8, True)),
        ("group_size 128 must divide", dynamic_group_quant, (_x((2, 192)), torch.int8, 128)),
        (
            "group_size 64 must divide",
            rms_norm_group_quant,
            (_x((2, 96)), None, 1e-6, torch.int8, 64),
        ),
        ("last dim must be even", silu_and_mul_quant, (_x((2, 7)), s, torch.int8)),
        ("weight must have shape", rms_norm_dynamic_quant, (x, torch.ones(3), 1e-6, torch.int8)),
        ("x_residual must match", fused_add_rms_norm_quant, (x, x[:2], w, 1e-6, s, torch.int8)),
        ("dtype must be one of", fused_add_rms_norm_dynamic_quant, (x, x, w, 1e-6, torch.uint8)),
        ("dtype must be one of", all_reduce_rms_norm_quant, (x, None, w, 1e-6, s, torch.bfloat16)),
        (
            "scale must be float32",
            all_reduce_rms_norm_quant,
            (x, None, w, 1e-6, s.half(), torch.int8),
        ),
        (
            "a and b must have one dtype",
            scaled_mm,
            (a8, sa, b8.to(torch.float8_e4m3fn), sb, torch.float32),
        ),
        ("a.dtype must be one of", scaled_mm, (x, sa, b8, sb, torch.float32)),
        ("b must be \\[K, N\\]", scaled_mm, (a8, sa, b8.t(), sb, torch.float32)),
        ("out_dtype must be", scaled_mm, (a8, sa, b8, sb, torch.int32)),
        ("a_scale must be a float32", scaled_mm, (a8, sa.double(), b8, sb, torch.float32)),
        (
            "a_scale must be \\[1\\] or \\[M, 1\\]",
            scaled_mm,
            (a8, torch.ones(4), b8, sb, torch.float32),
        ),
        ("b_scale \\[1\\] or \\[1, N\\]", scaled_mm, (a8, sa, b8, torch.ones(8, 1), torch.float32)),
        (
            "both 128-block scales",
            scaled_mm,
            (a8, torch.ones(4, 1), b8, torch.ones(2, 1), torch.float32),
        ),
        ("bias must be \\[N\\]", scaled_mm, (a8, sa, b8, sb, torch.float32, torch.ones(7))),
        (
            "bias must be \\[N\\] = \\[8\\] of out_dtype",
            scaled_mm,
            (a8, sa, b8, sb, torch.bfloat16, torch.ones(8)),
        ),
    ]


@pytest.mark.parametrize(
    ("match", "op", "args"), _bad_cases(), ids=lambda v: v.name if isinstance(v, opir.Op) else ""
)
def test_bad_input_is_a_clear_value_error(match, op, args):
    with pytest.raises(ValueError, match=match):
        op(*args)
    with pytest.raises(ValueError, match=match):
        op.native(*args)


def test_mixed_block_and_per_token_scales_are_refused():
    a = torch.zeros(4, 256, dtype=torch.int8)
    b = torch.zeros(256, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match="both 128-block scales"):
        scaled_mm(a, torch.ones(4, 2), b, torch.ones(1, 256), torch.float32)
    got = scaled_mm(a, torch.ones(4, 2), b, torch.ones(2, 2), torch.float32)
    assert got.shape == (4, 256)
    # K, N <= 128: the block scales [M, 1] and [1, 1] are per-token and per-tensor ones
    a, b = torch.ones(3, 100, dtype=torch.int8), torch.ones(100, 5, dtype=torch.int8)
    got = scaled_mm(a, torch.full((3, 1), 0.5), b, torch.full((1, 1), 0.25), torch.float32)
    assert (got == 12.5).all()


def test_schemas_take_a_scalar_type():
    assert "ScalarType dtype" in static_quant.schema
    assert "ScalarType out_dtype" in scaled_mm.schema
    assert fused_add_rms_norm_quant.maybe_inplace is not None
    assert fused_add_rms_norm_quant.activations == ("x_residual",)


def test_ops_trace_under_torch_compile():
    def f(x, w):
        q, s = rms_norm_dynamic_quant(x, w, 1e-6, torch.int8)
        return scaled_mm(q, s, torch.ones(64, 8, dtype=torch.int8), torch.ones(1, 8), x.dtype)

    x, w = _x((3, 64)), torch.ones(64)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, w), f(x, w))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=40
    ),
    scale=st.floats(2.0**-20, 1024.0, width=32),
    qdtype=st.sampled_from(QDTYPES),
    xdtype=st.sampled_from(XDTYPES),
)
def test_static_quant_of_any_values_is_the_formula(values, scale, qdtype, xdtype):
    x = torch.tensor(values, dtype=torch.float32).to(xdtype)
    s = _t(scale)
    q = static_quant(x, s, qdtype)
    assert _same(q, _formula(x, s, qdtype))
    finite = torch.isfinite(x.float())
    if qdtype == torch.int8:
        assert ((q >= -128) & (q <= 127)).all()
    else:
        assert torch.isfinite(q.float()[finite]).all()  # the clamp: never NaN from range


def test_empty_groups_and_rows():
    for shape in [(3, 0), (0, 128), (2, 3, 0), (2, 0, 128)]:
        for column_major in (False, True):
            q, s = dynamic_group_quant(torch.randn(*shape), torch.int8, 64, column_major)
            assert q.shape == shape and s.shape == (*shape[:-1], shape[-1] // 64)


def test_maybe_inplace_returns_the_ops_results():
    x, r = _x((4, 64), torch.bfloat16, 1, 1.0), _x((4, 64), torch.bfloat16, 2, 1.0)
    w, sc = torch.ones(64, dtype=torch.bfloat16), _t(0.03)
    for op, extra in (
        (fused_add_rms_norm_quant, (sc, torch.int8)),
        (fused_add_rms_norm_dynamic_quant, (torch.float8_e4m3fn,)),
    ):
        want = op.native(x, r, w, 1e-6, *extra)
        got = op.maybe_inplace(x, r.clone(), w, 1e-6, *extra)
        assert len(got) == len(want)
        assert _same(got[0], want[0]) and _same(got[-1], want[-1])  # q and the residual
