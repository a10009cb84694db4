"""``opir bench dispatch``: what opir's eager dispatch costs over a direct call.

On a 1x64 fp32 ``rms_norm`` (tiny, so per-call overhead dominates) it times,
interleaved in one run: the impl the default priority selects, called
directly; that impl's ``supports_args`` alone (part of any dispatch to it);
``op(...)``; ``op.torch_op(...)`` (through the torch dispatcher); and
``op(...)`` on a twin op (same native function) whose priority lists a
provider whose predicate rejects, then the selected impl. Done once under
``torch.inference_mode()`` (how inference engines call ops) and once with
autograd on (no input requires grad).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch

from opir.bench.timing import interleave
from opir.core.impl import Impl
from opir.core.op import Op, register_op
from opir.ops import rms_norm

DIRECT = "impl called directly"
CONTROL = "impl called directly, again"
PREDICATE = "its supports_args alone"
CANDIDATES = (
    DIRECT,
    CONTROL,
    PREDICATE,
    "op(...)",
    "op.torch_op(...)",
    "op(...), first provider rejects",
)


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    mode: str
    provider: str  # the impl the default priority selected
    median_us: dict[str, float]  # candidate -> median µs per call
    overhead_us: dict[str, float]  # candidate -> median paired difference to DIRECT

    @property
    def noise_floor_us(self) -> float:
        """|direct - direct| measured the same way: differences below this are noise."""
        return abs(self.overhead_us[CONTROL])


@contextlib.contextmanager
def _twin_with_rejecting_first(selected: Impl) -> Iterator[Op]:
    """rms_norm's twin with priority [rejects, <selected impl>]; unregistered afterwards."""
    twin = register_op(name="bench_dispatch_twin")(rms_norm.native)

    def rejects(x, weight, epsilon, variance_size=None):
        return False

    twin.register_impl("bench_rejects", supports_args=rejects)(rms_norm.native)
    twin.register_impl("bench_selected", supports_args=selected.supports_args)(selected.fn)
    try:
        twin.set_default(["bench_rejects", "bench_selected", "native"])
        yield twin
    finally:
        twin._drop()


def _identity(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    return x


def run_trivial(rounds: int = 101, number: int = 2000) -> DispatchResult:
    """opir's own dispatch cost: an op whose only impl returns its input."""
    op = register_op(name="bench_dispatch_identity")(_identity)
    try:
        x, weight = torch.ones(1, 64), torch.ones(64)
        fns = {
            DIRECT: lambda: _identity(x, weight, 1e-6),
            CONTROL: lambda: _identity(x, weight, 1e-6),
            "op(...)": lambda: op(x, weight, 1e-6),
        }
        with torch.inference_mode():
            samples = interleave(fns, rounds=rounds, number=number)
    finally:
        op._drop()
    return DispatchResult(
        "inference_mode, impl returns its input",
        "native",
        {name: samples.median(name) * 1e6 for name in fns},
        {name: samples.paired_difference(name, DIRECT) * 1e6 for name in fns},
    )


def run(
    rounds: int = 101, number: int = 500, on_round: Callable[[], None] | None = None
) -> list[DispatchResult]:
    """One result per autograd mode, all candidates interleaved within a mode."""
    args = rms_norm.sample_inputs(num_tokens=1, hidden_size=64)
    selected = rms_norm.dispatch(*args)
    direct = selected.fn
    predicate = selected.supports_args or (lambda *a: True)
    torch_op = rms_norm.torch_op
    results = []
    with _twin_with_rejecting_first(selected) as twin:
        for mode, ctx in (("inference_mode", torch.inference_mode), ("grad on", torch.enable_grad)):
            with ctx():
                fns = (
                    lambda: direct(*args),
                    lambda: direct(*args),
                    lambda: predicate(*args),
                    lambda: rms_norm(*args),
                    lambda: torch_op(*args),
                    lambda: twin(*args),
                )
                samples = interleave(
                    dict(zip(CANDIDATES, fns, strict=True)),
                    rounds=rounds,
                    number=number,
                    on_round=on_round,
                )
            results.append(
                DispatchResult(
                    mode,
                    selected.provider,
                    {name: samples.median(name) * 1e6 for name in CANDIDATES},
                    {name: samples.paired_difference(name, DIRECT) * 1e6 for name in CANDIDATES},
                )
            )
    return results
