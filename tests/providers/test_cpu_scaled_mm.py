"""The cpu provider's int8 scaled_mm (torch._int_mm + fp32 epilogue) against native."""

from __future__ import annotations

import itertools

import pytest
import torch
from conformance import assert_matches_native, run_provider

import opir
from opir.ops import scaled_mm
from opir.providers.cpu.scaled_mm import supports_scaled_mm

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _ids(v):
    return str(v).removeprefix("torch.")


@pytest.mark.parametrize("out_dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("scales", ["tensor", "token"])
def test_matches_native_across_shapes(out_dtype, scales):
    for m, k, n in [(0, 64, 8), (1, 4096, 256), (33, 100, 7), (7, 3000, 300)]:
        for has_bias in (False, True):
            args = scaled_mm.sample_inputs(
                dtype=out_dtype, num_tokens=m, hidden_size=k, out_features=n, scales=scales,
                has_bias=has_bias,
            )  # fmt: skip
            assert_matches_native(scaled_mm, "cpu", args)


def test_error_is_within_the_stated_epilogue_bound():
    # |got - exact| <= 4 * 2**-24 * (|acc * sa * sb| + |bias|) in fp32 (before any rounding)
    args = scaled_mm.sample_inputs(dtype=torch.float32, num_tokens=16, hidden_size=8192,
                                   out_features=64)  # fmt: skip
    a, sa, b, sb, _, bias = args
    got = run_provider(scaled_mm, "cpu", args).double()
    prod = (a.double() @ b.double()) * sa.double() * sb.double()
    exact = prod + bias.double()
    bound = 4 * 2.0**-24 * (prod.abs() + bias.double().abs())
    assert ((got - exact).abs() <= bound).all()


def test_transposed_weight_and_strided_activation():
    w = torch.randint(-128, 128, (96, 200), dtype=torch.int8)  # [N, K]
    a = torch.randint(-128, 128, (5, 400), dtype=torch.int8)[:, ::2]
    sa, sb = torch.rand(5, 1) + 0.01, torch.rand(1, 96) + 0.01
    assert_matches_native(scaled_mm, "cpu", (a, sa, w.t(), sb, torch.bfloat16, None))


def test_block_scales_and_fp8_fall_through_to_native():
    fp8 = scaled_mm.sample_inputs(dtype=torch.bfloat16, quant_dtype=torch.float8_e4m3fn)
    block = scaled_mm.sample_inputs(dtype=torch.bfloat16, hidden_size=256, out_features=256,
                                    scales="block")  # fmt: skip
    for args in (fp8, block):
        assert not supports_scaled_mm(*args)
        with scaled_mm.set_priority(["cpu", "native"]):
            assert scaled_mm.dispatch(*args).provider == "native"
    assert scaled_mm.get_priority()[0] == "cpu"  # the CPU default


def test_bad_input_gets_the_native_error():
    a = torch.zeros(4, 64, dtype=torch.int8)
    b = torch.zeros(64, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="bias must be"):
        run_provider(scaled_mm, "cpu", (a, torch.ones(1), b, torch.ones(1), torch.float32,
                                        torch.ones(8, dtype=torch.bfloat16)))  # fmt: skip
    with pytest.raises(ValueError, match="b_scale"):
        run_provider(scaled_mm, "cpu", (a, torch.ones(1), b, torch.ones(1, 7), torch.float32))


@pytest.mark.slow
def test_under_opir_compile_the_epilogue_is_fused():
    args = scaled_mm.sample_inputs(dtype=torch.bfloat16, num_tokens=8, hidden_size=256)

    def f(a, sa, b, sb, bias):
        return scaled_mm(a, sa, b, sb, torch.bfloat16, bias) + 1

    a, sa, b, sb, _, bias = args
    compiled = opir.compile(f)
    got = compiled(a, sa, b, sb, bias)
    with scaled_mm.set_priority(["cpu"]):
        want = f(a, sa, b, sb, bias)
    # Inductor keeps "+ 1" in fp32 before the bf16 store: one bf16 ulp of ~1 apart
    torch.testing.assert_close(got, want, atol=2**-7, rtol=2**-7)
    assert ("scaled_mm", "cpu") in compiled.opir_report.providers(), compiled.opir_report


def test_every_small_layout_sums_exactly():
    # torch._int_mm misreads overlapping rows and odd strides of size-1 dims (see below);
    # the impl re-views or copies those operands
    gen = torch.Generator().manual_seed(0)
    for m, k, n in itertools.product([1, 3], [1, 5], [1, 3]):
        for sa in itertools.product([0, 1, 7], repeat=2):
            for sb in itertools.product([0, 1, 7], repeat=2):
                a = torch.randint(-128, 128, (64,), dtype=torch.int8, generator=gen)
                b = torch.randint(-128, 128, (64,), dtype=torch.int8, generator=gen)
                a, b = a.as_strided((m, k), sa), b.as_strided((k, n), sb)
                got = run_provider(scaled_mm, "cpu", (a, torch.ones(1), b, torch.ones(1),
                                                      torch.float32))  # fmt: skip
                assert torch.equal(got, (a.long() @ b.long()).float()), (m, k, n, sa, sb)


def test_upstream_int_mm_misreads_overlapping_rows():
    # torch 2.13 CPU: silently wrong for an expanded operand and for a single row whose
    # leading stride is below its length. When this fails, torch fixed it: _plain may go.
    a = torch.randint(-128, 128, (1, 64), dtype=torch.int8).expand(7, 64)
    b = torch.randint(-128, 128, (64, 32), dtype=torch.int8)
    wrong = not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    row = torch.randint(-128, 128, (32,), dtype=torch.int8).as_strided((1, 16), (8, 1))
    wrong_row = not torch.equal(torch._int_mm(row, b[:16]).long(), row.long() @ b[:16].long())
    assert wrong and wrong_row
