"""The cpu provider's int8 quantization kernels (quant.cpp) against the native functions.

Every output is bit-identical to native (torch.equal, NaN scales where native has
NaN), the fused norm ops included: the kernels repeat torch's fp32 summation order
for the rms (checked directly in ``test_sum_of_squares_is_torchs``), so not even
the one-quantum tolerance the fused ops allow is used.
"""

from __future__ import annotations

import pytest
import torch
from conformance import run_provider
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from opir.ops import quant as Q
from opir.ops.quant import (
    dynamic_quant,
    fused_add_rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm_dynamic_quant,
    rms_norm_quant,
    scaled_mm,
    silu_and_mul_dynamic_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.providers.cpu import quant_impls, quant_kernels

I8 = torch.int8
F8 = torch.float8_e4m3fn
QDTYPES = [I8, F8]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
OPS = (
    static_quant,
    dynamic_quant,
    rms_norm_quant,
    rms_norm_dynamic_quant,
    fused_add_rms_norm_quant,
    fused_add_rms_norm_dynamic_quant,
    silu_and_mul_quant,
    silu_and_mul_dynamic_quant,
)
NORM_OPS = (rms_norm_quant, rms_norm_dynamic_quant)
ADD_OPS = (fused_add_rms_norm_quant, fused_add_rms_norm_dynamic_quant)
SILU_OPS = (silu_and_mul_quant, silu_and_mul_dynamic_quant)


def _ids(v):
    return getattr(v, "name", None) or str(v).removeprefix("torch.")


def cpu(op, *args, donate=False):
    return run_provider(op, "cpu", args, donate=donate)


def assert_same_bits(got, want) -> None:
    got = got if isinstance(got, tuple | list) else (got,)
    want = want if isinstance(want, tuple | list) else (want,)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape, g.dtype, w.dtype)
        if g.dtype == F8:
            # fp8 by bit pattern, except the sign of NaN (0x7F / 0xFF), which is no
            # part of the contract: torch's own kernels set it on some paths and not others
            g, w = g.view(torch.uint8), w.view(torch.uint8)
            g = torch.where((g & 0x7F) == 0x7F, 0x7F, g)
            w = torch.where((w & 0x7F) == 0x7F, 0x7F, w)
        same = g == w
        if g.is_floating_point():
            same |= g.isnan() & w.isnan()
        if not bool(same.all()):
            i = (~same).nonzero()[0].tolist()
            raise AssertionError(
                f"output {k}: {int((~same).sum())} of {g.numel()} elements differ, first at "
                f"{i}: {g[tuple(i)].item()!r} vs native {w[tuple(i)].item()!r}"
            )


def _x(shape, dtype, seed=0, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(shape, generator=gen)).to(dtype)


def args_for(op, x, *, weight=None, weight_bias=0.0, scale=0.03, residual=None, ub=None, q=I8):
    """The op's arguments around x (x [.., H]; for the silu ops [.., 2d]); q: the
    quantized dtype."""
    s = torch.tensor([scale if q == I8 else scale / 4])
    if op is static_quant:
        return (x, s, q)
    if op is dynamic_quant:
        return (x, q, True, ub)
    if op is rms_norm_quant:
        return (x, weight, 1e-6, s, q, weight_bias)
    if op is rms_norm_dynamic_quant:
        return (x, weight, 1e-6, q, ub, weight_bias)
    if residual is None:
        residual = _x(x.shape, x.dtype, seed=7, spread=1.0)
    if op is fused_add_rms_norm_quant:
        return (x, residual, weight, 1e-6, s, q, weight_bias)
    if op is fused_add_rms_norm_dynamic_quant:
        return (x, residual, weight, 1e-6, q, ub, weight_bias)
    if op is silu_and_mul_quant:
        return (x, s, q)
    return (x, q, ub)


def check(op, args):
    """cpu == native; the in-place ops both functionally and through maybe_inplace."""
    want = op.native(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    assert_same_bits(cpu(op, *args), want)
    if op in ADD_OPS:
        donated = list(args)
        donated[1] = args[1].clone()
        got = cpu(op, *donated, donate=True)
        assert_same_bits(got, want)
        assert_same_bits(donated[1], want[-1])  # the residual was written in place


# --- every op against native ------------------------------------------------------


@pytest.mark.parametrize("q", QDTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("op", OPS, ids=_ids)
@pytest.mark.parametrize("shape", [(5, 4096), (3, 100), (1, 7), (2, 3, 64)], ids=str)
def test_matches_native(op, dtype, shape, q):
    if op in SILU_OPS and dtype == torch.float32:
        pytest.skip("fp32 silu is native's (the predicate declines it)")
    if op in SILU_OPS:
        shape = (*shape[:-1], 2 * shape[-1])  # [..., 2 * d]
    check(op, args_for(op, _x(shape, dtype), q=q))


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("op", NORM_OPS + ADD_OPS, ids=_ids)
@pytest.mark.parametrize(
    ("weight_dtype", "weight_bias"),
    [(None, 0.0), ("x", 0.0), (torch.float32, 0.0), ("x", 1.0), (torch.bfloat16, 0.0)],
    ids=["no_weight", "weight_x_dtype", "weight_fp32", "weight_bias", "weight_bf16"],
)
def test_norm_weights_match_native(op, dtype, weight_dtype, weight_bias):
    """Every rounding path of the rms_norm native (a same-dtype weight rounds twice)."""
    x = _x((4, 1000), dtype, spread=1.0)
    weight = None
    if weight_dtype is not None:
        w = 1.0 + 0.1 * torch.randn(1000, generator=torch.Generator().manual_seed(3))
        weight = w.to(dtype if weight_dtype == "x" else weight_dtype)
    check(op, args_for(op, x, weight=weight, weight_bias=weight_bias))


@pytest.mark.parametrize("op", [dynamic_quant, rms_norm_dynamic_quant, silu_and_mul_dynamic_quant])
def test_scale_ub(op):
    x = _x((4, 64), torch.bfloat16)
    for ub in (0.5, 1e-9, 100.0):
        check(op, args_for(op, x, ub=torch.tensor([ub])))
    r = _x((4, 64), torch.bfloat16, seed=9)
    check(fused_add_rms_norm_dynamic_quant, (x, r, None, 1e-6, I8, torch.tensor([0.5]), 0.0))


def test_dynamic_per_tensor():
    for shape in [(7, 300), (300,), (2, 3, 50), (0, 8), (4, 0)]:
        x = _x(shape, torch.bfloat16)
        assert_same_bits(cpu(dynamic_quant, x, I8, False, None), dynamic_quant.native(x, I8, False))


@pytest.mark.parametrize("hidden", [1, 3, 7, 8, 9, 15, 16, 31, 64, 100, 1000, 4096, 5120, 12288])
def test_sum_of_squares_is_torchs(hidden):
    """The fused norms' rms is bit-identical because the fp32 sum of squares is taken in
    the order torch's CPU sum takes it (the native's ``s.pow(2).mean(-1)``)."""
    ext = quant_kernels.extension()
    gen = torch.Generator().manual_seed(hidden)
    for _ in range(8):
        row = torch.randn(hidden, generator=gen) * float(torch.rand(1, generator=gen)) * 4
        assert ext.sum_squares(row) == row.pow(2).sum().item()


# --- edge rows --------------------------------------------------------------------


def _edge_rows(dtype):
    big = torch.finfo(dtype).max
    x = _x((8, 96), dtype)
    x[0] = 0  # all zero: the minimum scale, q = 0
    x[1, 3] = float("nan")  # NaN: NaN scale, q = 0 (dynamic); q = 0 there (static)
    x[2, 5] = float("inf")  # inf: inf scale (dynamic) / saturation (static)
    x[3, 1] = -float("inf")
    x[4] = big  # huge values: saturate at 127 / -128
    x[4, ::3] = -big
    x[5, ::2] = 0.015  # exactly half a quantum of 0.03: rounds half to even
    x[5, 1::4] = 0.045
    x[6] = 1e-30 if dtype != torch.float16 else 1e-7  # tiny (subnormal in fp16)
    return x


@pytest.mark.parametrize("q", QDTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("op", OPS, ids=_ids)
def test_edge_rows(op, dtype, q):
    if op in SILU_OPS and dtype == torch.float32:
        pytest.skip("fp32 silu is native's")
    check(op, args_for(op, _edge_rows(dtype), q=q))


def test_fp8_every_conversion_case():
    """fp8: values across the whole range, the subnormals and the rounding midpoints
    (torch's RNE conversion after the clamp), bit for bit."""
    v = torch.cat(
        [
            torch.linspace(-500, 500, 100001),
            torch.linspace(-0.03, 0.03, 100001),
            torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 464.0, 480.0]),
            torch.tensor([2.0**-9, 2.0**-10, 3 * 2.0**-11, 2.0**-6, 17 * 2.0**-10, 448.0]),
        ]
    )
    for scale in (1.0, 0.5, 3.0):
        s = torch.tensor([scale])
        assert_same_bits(cpu(static_quant, v, s, F8), static_quant.native(v, s, F8))


def test_half_to_even():
    x = torch.arange(-300, 300, dtype=torch.float32) * 0.5  # every k + 0.5
    got = cpu(static_quant, x, torch.tensor([1.0]), I8)
    assert_same_bits(got, static_quant.native(x, torch.tensor([1.0]), I8))
    assert got[x == 2.5].item() == 2 and got[x == -3.5].item() == -4


@pytest.mark.parametrize("op", OPS, ids=_ids)
@pytest.mark.parametrize("shape", [(0, 64), (0, 3, 64), (4, 0), (3, 0, 8)], ids=str)
def test_empty(op, shape):
    check(op, args_for(op, torch.randn(shape).bfloat16()))


def _strided(x):
    wide = torch.zeros(x.shape[0], x.shape[1] + 5, dtype=x.dtype)
    wide[:, 2 : 2 + x.shape[1]] = x
    return wide[:, 2 : 2 + x.shape[1]]


def _non_collapsible(x):
    t, c = x.shape
    buf = torch.zeros(2, t // 2 + 1, c, dtype=x.dtype)
    buf[:, : t // 2] = x.reshape(2, t // 2, c)
    return buf[:, : t // 2]


@pytest.mark.parametrize("layout", [_strided, _non_collapsible], ids=lambda f: f.__name__)
@pytest.mark.parametrize("op", OPS, ids=_ids)
def test_strided_rows(op, layout):
    x = layout(_x((6, 128), torch.bfloat16))
    args = args_for(op, x)
    if op in ADD_OPS:
        args = (x, layout(_x((6, 128), torch.bfloat16, seed=4)), *args[2:])
    check(op, args)


@settings(max_examples=10, deadline=None)
@given(
    tokens=st.integers(0, 6),
    hidden=st.integers(1, 300),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([0.01, 1.0, 30.0]),
)
def test_bit_identical_fuzz(tokens, hidden, dtype, seed, spread):
    x = _x((tokens, 2 * hidden), dtype, seed, spread)
    w = _x((2 * hidden,), dtype, seed + 1, 0.2) + 1
    for op in OPS:
        check(op, args_for(op, x, weight=w) if op in NORM_OPS + ADD_OPS else args_for(op, x))


# --- the in-place residual ----------------------------------------------------------


@pytest.mark.parametrize("op", ADD_OPS, ids=_ids)
def test_in_place_residual(op):
    x, r = _x((4, 64), torch.bfloat16), _x((4, 64), torch.bfloat16, seed=1)
    args = args_for(op, x, residual=r)
    want = op.native(*args)
    x0, r0 = x.clone(), r.clone()
    functional = cpu(op, *args)
    assert torch.equal(r, r0) and torch.equal(x, x0)  # the functional call writes nothing
    got = cpu(op, *args, donate=True)
    assert got[-1] is r  # the residual was written in place and returned
    assert_same_bits(functional, want)
    assert_same_bits(got, want)
    assert torch.equal(x, x0)  # x is never written


@pytest.mark.parametrize("op", ADD_OPS, ids=_ids)
def test_residual_aliasing_x(op):
    """x and x_residual one tensor, or overlapping views of one buffer: as native on copies."""
    buf = _x((9, 64), torch.bfloat16)
    cases = [(buf[:4], buf[:4]), (buf[:-1], buf[1:]), (buf[1:], buf[:-1])]
    for x, r in cases:
        want = op.native(*args_for(op, x.clone(), residual=r.clone()))
        got = cpu(op, *args_for(op, x, residual=r), donate=True)
        assert_same_bits(got, want)


@pytest.mark.parametrize("op", ADD_OPS, ids=_ids)
def test_residual_with_overlapping_elements(op):
    """An expanded residual cannot hold the new one: a fresh tensor is returned."""
    x = _x((4, 64), torch.bfloat16)
    r = _x((1, 64), torch.bfloat16, seed=2).expand(4, 64)
    want = op.native(*args_for(op, x, residual=r.clone()))
    got = cpu(op, *args_for(op, x, residual=r), donate=True)
    assert_same_bits(got, want)


# --- bad inputs: ValueError, never a crash ------------------------------------------


def _bad_cases():
    x = _x((4, 64), torch.bfloat16)
    r = _x((4, 64), torch.bfloat16, seed=1)
    s, s64, s2 = torch.tensor([0.03]), torch.tensor([0.03], dtype=torch.float64), torch.ones(2)
    return [
        (static_quant, (x, s64, I8), "scale must be float32"),
        (static_quant, (x, s2, I8), "scale must be a per-tensor scale of shape \\[1\\]"),
        (rms_norm_quant, (x, torch.ones(63), 1e-6, s, I8, 0.0), "weight must have shape"),
        (rms_norm_quant, (x, None, 1e-6, torch.ones(2, 1), I8, 0.0), "scale must"),
        (rms_norm_dynamic_quant, (x, None, 1e-6, I8, s2, 0.0), "scale_ub must be a per-tensor"),
        (dynamic_quant, (x, I8, True, s64), "scale_ub must be float32"),
        (fused_add_rms_norm_quant, (x, r[:, :63], None, 1e-6, s, I8, 0.0), "x_residual must"),
        (fused_add_rms_norm_dynamic_quant, (x, r, torch.ones(3), 1e-6, I8, None, 0.0), "weight"),
        (silu_and_mul_quant, (x, s64, I8), "scale must be float32"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_kernel_rejects_bad_arguments(case):
    op, args, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        cpu(op, *args)
    with pytest.raises(ValueError, match=match):  # as native does, in its words
        op.native(*args)


def test_odd_last_dim_for_silu():
    x = _x((2, 9), torch.bfloat16)
    for op in SILU_OPS:
        with pytest.raises(ValueError, match="last dim must be even"):
            cpu(op, *args_for(op, x))


def test_what_the_kernels_decline_goes_to_native():
    """fp8 e4m3fnuz, fp32 silu, a non-contiguous last dim: the predicates decline, native answers
    (and native's ValueError for a dtype that is no quantised dtype)."""
    x = _x((4, 64), torch.bfloat16)
    s = torch.tensor([0.03])
    assert not quant_impls.supports_static_quant(x, s, torch.float8_e4m3fnuz)
    assert not quant_impls.supports_silu_and_mul_quant(x.float(), s, I8)
    assert not quant_impls.supports_dynamic_quant(x.t(), I8)
    with static_quant.set_priority(["cpu", "native"]):
        fnuz = torch.float8_e4m3fnuz
        got = static_quant(x, s, fnuz).view(torch.uint8)
        assert torch.equal(got, Q.static_quant.native(x, s, fnuz).view(torch.uint8))
        with pytest.raises(ValueError, match="dtype must be one of"):
            static_quant(x, s, torch.float32)
        with pytest.raises(ValueError, match="x must be a float32, bfloat16 or float16"):
            static_quant(torch.ones(4, 8, dtype=torch.int32), s, I8)


# --- tracing ------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS, ids=_ids)
def test_custom_op_under_make_fx(op):
    """The traceable impl is one opir_cpu node (the in-place ones mutate x_residual)."""
    impl = op.impls["cpu"].fn
    x = _x((3, 64), torch.bfloat16)
    args = args_for(op, x)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def f(*ts):
        full = list(args)
        for i, t in zip(tensors, ts, strict=True):
            full[i] = t
        return impl(*full)

    name = f"{op.name}_" if op in ADD_OPS else op.name
    want = op.native(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    for mode in ("real", "fake"):
        inputs = [args[i].clone() for i in tensors]
        gm = make_fx(f, tracing_mode=mode)(*inputs)
        assert f"torch.ops.opir_cpu.{name}.default" in gm.code
        inputs = [args[i].clone() for i in tensors]
        assert_same_bits(gm(*inputs), want)


# --- scaled_mm: torch._int_mm + the native's fp64 epilogue ---------------------------


@pytest.mark.parametrize("out_dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("scales", ["tensor", "token"])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 32), (5, 100, 33), (17, 512, 128)], ids=str)
def test_scaled_mm_matches_native(out_dtype, scales, m, k, n):
    for has_bias in (True, False):
        args = scaled_mm.sample_inputs(
            dtype=out_dtype,
            num_tokens=m,
            hidden_size=k,
            out_features=n,
            scales=scales,
            has_bias=has_bias,
        )
        assert_same_bits(cpu(scaled_mm, *args), scaled_mm.native(*args))
        a, sa, b, sb, od, bias = args
        bt = b.t().contiguous().t()  # a [N, K] weight passed as w_q.t()
        assert_same_bits(cpu(scaled_mm, a, sa, bt, sb, od, bias), scaled_mm.native(*args))


def test_scaled_mm_declines_block_scales_and_fp8():
    args = scaled_mm.sample_inputs(dtype=torch.bfloat16, hidden_size=256, scales="block")
    assert not quant_impls.supports_scaled_mm(*args)
    a, sa, b, sb, od, bias = scaled_mm.sample_inputs(dtype=torch.bfloat16)
    f8 = torch.float8_e4m3fn
    assert not quant_impls.supports_scaled_mm(a.to(f8), sa, b.to(f8), sb, od, bias)
    assert not quant_impls.supports_scaled_mm(a, sa, b, sb[:, :1].expand(3, 1), od, bias)


def test_scaled_mm_bad_arguments():
    a, sa, b, sb, od, bias = scaled_mm.sample_inputs(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out_dtype must be"):
        cpu(scaled_mm, a, sa, b, sb, torch.int32, None)
    with pytest.raises(ValueError, match="bias must be"):
        cpu(scaled_mm, a, sa, b, sb, od, bias.float())
    with pytest.raises(ValueError, match="a_scale must be a float32"):
        cpu(scaled_mm, a, sa.double(), b, sb, od, bias)
