"""``overlaps_itself`` decides whether a donated activation can be written in place:
checked against brute force over random strided layouts. It may only err on the
safe side (saying "overlaps" for an exotic interleaved layout that does not)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opir.core.impl import overlaps_itself


def _brute_force(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    offsets = [
        sum(i * s for i, s in zip(index, strides, strict=True))
        for index in itertools.product(*(range(n) for n in sizes))
    ]
    return len(offsets) != len(set(offsets))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12)), min_size=1, max_size=4))
def test_matches_brute_force(dims):
    sizes = tuple(n for n, _ in dims)
    strides = tuple(s for _, s in dims)
    extent = 1 + sum((n - 1) * s for n, s in dims if n)
    t = torch.zeros(max(extent, 1)).as_strided(sizes, strides)
    truth = _brute_force(sizes, strides)
    if truth:
        assert overlaps_itself(t)  # never a false "safe to write"
    ordered = sorted((s, n) for n, s in dims if n > 1)
    nested = all(  # each dim spans past all smaller ones: the layouts views produce
        s2 > sum(s1 * (n1 - 1) for s1, n1 in ordered[:i]) for i, (s2, _) in enumerate(ordered)
    )
    if nested:
        assert overlaps_itself(t) == truth


def test_common_views():
    base = torch.zeros(6, 8)
    assert not overlaps_itself(base[:, :5])  # strided rows
    assert not overlaps_itself(base.t())
    assert not overlaps_itself(torch.zeros(2, 3, 6, 772)[:, :2, :5, :769])
    assert overlaps_itself(torch.ones(1).expand(3))
    assert overlaps_itself(base.unfold(1, 4, 2))  # sliding windows share elements
