"""``opir.providers.int_mm`` (torch._int_mm with safe operand layouts), and every
supported non-compiling provider of ``scaled_mm`` on those layouts."""

from __future__ import annotations

import itertools

import pytest
import torch

import opir
from opir.ops import scaled_mm
from opir.providers.int_mm import int_mm

STRIDES = list(itertools.product([0, 1, 7], repeat=2))


def _operands(m, k, n, sa, sb, gen):
    a = torch.randint(-128, 128, (64,), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (64,), dtype=torch.int8, generator=gen)
    return a.as_strided((m, k), sa), b.as_strided((k, n), sb)


def _cases():
    gen = torch.Generator().manual_seed(0)
    for m, k, n in itertools.product([1, 3], [1, 5], [1, 3]):
        for sa, sb in itertools.product(STRIDES, STRIDES):
            yield (m, k, n, sa, sb), _operands(m, k, n, sa, sb, gen)


def test_int_mm_sums_exactly_for_every_small_layout():
    for label, (a, b) in _cases():
        assert torch.equal(int_mm(a, b).long(), a.long() @ b.long()), label


def test_upstream_int_mm_misreads_overlapping_rows():
    # torch 2.13 CPU: silently wrong for an expanded operand and for a single row whose
    # leading stride is below its length. When this fails, torch fixed it.
    a = torch.randint(-128, 128, (1, 64), dtype=torch.int8).expand(7, 64)
    b = torch.randint(-128, 128, (64, 32), dtype=torch.int8)
    wrong = not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    row = torch.randint(-128, 128, (32,), dtype=torch.int8).as_strided((1, 16), (8, 1))
    wrong_row = not torch.equal(torch._int_mm(row, b[:16]).long(), row.long() @ b[:16].long())
    assert wrong and wrong_row


def _eager_providers():
    impls = scaled_mm.impls
    return [p for p, i in impls.items() if p not in ("native", "inductor") and i.supported]


@pytest.mark.parametrize("provider", _eager_providers() or [None])
def test_scaled_mm_providers_on_every_small_layout(provider):
    if provider is None:
        pytest.skip("no eager scaled_mm provider besides native here")
    one = torch.ones(1)
    for label, (a, b) in _cases():
        with opir.ops.scaled_mm.set_priority([provider, "native"]):
            got = scaled_mm(a, one, b, one, torch.float32)
        assert torch.equal(got, (a.long() @ b.long()).float()), (provider, label)
