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


def calls_per_round(fn: Callable[[], object], budget_s: float = 2e-3, cuda: bool = False) -> int:
    """How many calls of ``fn`` fill about ``budget_s`` (1 to 2000), from three timed calls."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    sync()
    elapsed = (time.perf_counter() - start) / 3
    return max(1, min(2000, int(budget_s / max(elapsed, 1e-7))))


def bytes_moved(op, args: tuple) -> int:
    """Bytes an op must move for one call on ``args``: every tensor argument read once,
    every output written once (an in-place op writes its activation arguments back).
    The output sizes come from the native function run on meta tensors."""
    import torch

    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    read = sum(size(a) for a in args if isinstance(a, torch.Tensor))
    if op.allow_inplace:
        return read + sum(size(args[i]) for i in op.activation_positions)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    out = op.native(*meta)
    outs = out if isinstance(out, tuple | list) else (out,)
    return read + sum(size(o) for o in outs if isinstance(o, torch.Tensor))


def copy_baseline(moved: int, device: str = "cpu", *, fresh: bool) -> Callable[[], object]:
    """A plain copy that moves ``moved`` bytes (half read, half written): ``clone()``
    (a freshly allocated output, as an op that returns a new tensor) when ``fresh``,
    else ``copy_()`` into memory allocated once (as an in-place op, or a kernel that
    writes into a preallocated ``out``)."""
    import torch

    source = torch.empty(moved // 2, dtype=torch.uint8, device=device)
    if fresh:
        return source.clone
    target = torch.empty_like(source)
    return lambda: target.copy_(source)
