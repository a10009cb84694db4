"""Interleaved timing for side-by-side ratios on a noisy, shared machine.

Every candidate is timed in every round, in a rotating order, so drift and a
noisy neighbour hit all of them alike. Differences against a baseline are
taken per round (paired) and then the median over rounds, which is far more
stable than the difference of two medians.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager


class Samples:
    """Seconds per call, one value per round, for each candidate."""

    def __init__(self, per_round: dict[str, list[float]]) -> None:
        self.per_round = per_round

    def median(self, name: str) -> float:
        return statistics.median(self.per_round[name])

    def spread(self, name: str) -> float:
        """Relative spread between rounds: interquartile range / median (0.05 = ±5 % noise)."""
        values = self.per_round[name]
        if len(values) < 2:
            return float("nan")  # one round says nothing about noise
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return (q3 - q1) / statistics.median(values)

    def paired_difference(self, name: str, baseline: str) -> float:
        """Median over rounds of (name - baseline) timed in the same round."""
        pairs = zip(self.per_round[name], self.per_round[baseline], strict=True)
        return statistics.median(a - b for a, b in pairs)

    def paired_ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of name / baseline timed in the same round."""
        pairs = zip(self.per_round[name], self.per_round[baseline], strict=True)
        return statistics.median(a / b for a, b in pairs)


def check_counts(**counts: int) -> None:
    """Raise ValueError naming the argument unless every count is an int >= 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def interleave(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 31,
    number: int = 1000,
    warmup: int = 100,
    on_round: Callable[[], None] | None = None,
    contexts: Mapping[str, Callable[[], ContextManager]] | None = None,
    settle: Callable[[], None] | None = None,
) -> Samples:
    """Time each candidate ``number`` calls per round for ``rounds`` rounds.

    ``contexts`` maps a candidate to a context manager factory entered around
    its timed loop (entering it is not timed), e.g. a scoped priority.
    ``settle`` runs before each timed loop, untimed: ``torch.cuda.synchronize``
    on a GPU, so host-side time is measured with an idle device queue (with
    ``number`` below the launch-queue depth the host never waits on the GPU).
    """
    check_counts(rounds=rounds, number=number)
    names = list(candidates)
    contexts = contexts or {}
    no_context = contextlib.nullcontext
    for name, fn in candidates.items():
        with contexts.get(name, no_context)():
            for _ in range(warmup):
                fn()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    loop = range(number)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            with contexts.get(name, no_context)():
                if settle is not None:
                    settle()
                start = clock()
                for _ in loop:
                    fn()
                elapsed = clock() - start
            per_round[name].append(elapsed / number)
        if on_round is not None:
            on_round()
    return Samples(per_round)
