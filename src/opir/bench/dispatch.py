"""``opir bench dispatch``: what opir's eager dispatch costs over a direct call.

On a 1x64 fp32 ``rms_norm`` (tiny, so per-call overhead dominates) it times,
interleaved in one run: the selected impl's function called directly;
``op(...)``; ``op.torch_op(...)`` (through the torch dispatcher); and
``op(...)`` on a twin op whose priority has two entries and whose first
provider's predicate rejects. Done once under ``torch.inference_mode()`` (how
inference engines call ops) and once with autograd on (no input requires grad).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch

from opir.bench.timing import interleave
from opir.core.op import Op, register_op
from opir.ops import rms_norm

DIRECT = "impl called directly"
CONTROL = "impl called directly, again"
CANDIDATES = (DIRECT, CONTROL, "op(...)", "op.torch_op(...)", "op(...), first provider rejects")


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    mode: str
    median_us: dict[str, float]  # candidate -> median µs per call
    overhead_us: dict[str, float]  # candidate -> median paired difference to DIRECT

    @property
    def noise_floor_us(self) -> float:
        """|direct - direct| measured the same way: differences below this are noise."""
        return abs(self.overhead_us[CONTROL])


@contextlib.contextmanager
def _twin_with_rejecting_first() -> Iterator[Op]:
    """rms_norm's twin with priority [rejects, native]; unregistered afterwards."""
    twin = register_op(name="bench_dispatch_twin")(rms_norm.native)

    def rejects(x, weight, epsilon, variance_size=None):
        return False

    twin.register_impl("bench_rejects", supports_args=rejects)(rms_norm.native)
    try:
        twin.set_default(["bench_rejects", "native"])
        yield twin
    finally:
        twin._drop()


def run(
    rounds: int = 101, number: int = 500, on_round: Callable[[], None] | None = None
) -> list[DispatchResult]:
    """One result per autograd mode, all candidates interleaved within a mode."""
    args = rms_norm.sample_inputs(num_tokens=1, hidden_size=64)
    direct = rms_norm.dispatch(*args).fn
    torch_op = rms_norm.torch_op
    results = []
    with _twin_with_rejecting_first() as twin:
        for mode, ctx in (("inference_mode", torch.inference_mode), ("grad on", torch.enable_grad)):
            with ctx():
                fns = (
                    lambda: direct(*args),
                    lambda: direct(*args),
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
                    {name: samples.median(name) * 1e6 for name in CANDIDATES},
                    {name: samples.paired_difference(name, DIRECT) * 1e6 for name in CANDIDATES},
                )
            )
    return results
