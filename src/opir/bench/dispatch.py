"""``opir bench dispatch``: what opir's eager dispatch costs over a direct call.

On a 1x64 fp32 ``rms_norm`` (tiny, so per-call overhead dominates) it times,
interleaved in one run: the impl the default priority selects, called
directly; that impl's ``supports_args`` alone (part of any dispatch to it);
``op(...)``; ``op.torch_op(...)`` (through the torch dispatcher); and
``op(...)`` on a twin op (same native function) whose priority lists a
provider whose predicate rejects, then the selected impl. Done once under
``torch.inference_mode()`` (how inference engines call ops) and once with
autograd on, where ``op(...)`` is also timed with an ``x`` that requires grad
(Hugging Face models called without ``no_grad``).

``run_trivial`` isolates opir's own cost with an op whose impl returns its
input, and times ``op(...)`` with the process-default priority next to the
same call inside a scoped priority for that op and for another op.

With ``device="cuda"`` the tensors live on the GPU and what is timed is the
host's time per call (dispatch plus kernel launch): the device is
synchronised before every timed loop, outside the timing, and a loop launches
fewer kernels than the launch queue holds, so idle-waiting on the GPU is
excluded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

from opir.bench.timing import interleave
from opir.core.impl import Impl
from opir.core.op import Op
from opir.core.register import register_op
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
GRAD_INPUT = "op(...), x requires grad"
SCOPED = "op(...) in a scope for this op"
SCOPED_OTHER = "op(...) in a scope for another op"


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
def _twin_with_rejecting_first(selected: Impl) -> Iterator[Op[..., Any]]:
    """rms_norm's twin with priority [rejects, <selected impl>]; unregistered afterwards."""
    twin = register_op(name="bench_dispatch_twin")(rms_norm.native)

    def rejects(x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False):
        return False

    twin.register_impl("bench_rejects", supports_args=rejects)(rms_norm.native)
    twin.register_impl("bench_selected", supports_args=selected.supports_args)(selected.fn)
    if selected.eager is not None:  # a loaded launcher: taken as it is, like the provider's
        twin.set_eager("bench_selected", selected.eager)
    try:
        twin.set_default(["bench_rejects", "bench_selected", "native"])
        yield twin
    finally:
        twin.drop()


def _identity(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    return x


def _settle(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device != "cpu" else None


def run_trivial(rounds: int = 101, number: int = 2000, device: str = "cpu") -> DispatchResult:
    """opir's own dispatch cost: an op whose only impl returns its input."""
    op = register_op(name="bench_dispatch_identity")(_identity)
    try:
        x, weight = torch.ones(1, 64, device=device), torch.ones(64, device=device)
        call = lambda: op(x, weight, 1e-6)  # noqa: E731
        fns = {
            DIRECT: lambda: _identity(x, weight, 1e-6),
            CONTROL: lambda: _identity(x, weight, 1e-6),
            "op(...)": call,
            SCOPED: call,
            SCOPED_OTHER: call,
        }
        contexts = {
            SCOPED: lambda: op.set_priority(["native"]),
            SCOPED_OTHER: lambda: rms_norm.set_priority(["native"]),
        }
        with torch.inference_mode():
            samples = interleave(
                fns, rounds=rounds, number=number, contexts=contexts, settle=_settle(device)
            )
    finally:
        op.drop()
    return DispatchResult(
        "inference_mode, impl returns its input",
        "native",
        {name: samples.median(name) * 1e6 for name in fns},
        {name: samples.paired_difference(name, DIRECT) * 1e6 for name in fns},
    )


def run(
    rounds: int = 101,
    number: int = 500,
    on_round: Callable[[], None] | None = None,
    device: str = "cpu",
) -> list[DispatchResult]:
    """One result per autograd mode, all candidates interleaved within a mode."""
    args: tuple[Any, ...] = rms_norm.complete_args(  # every argument, as impls receive them
        tuple(
            a.to(device) if isinstance(a, torch.Tensor) else a
            for a in rms_norm.sample_inputs(num_tokens=1, hidden_size=64)
        )
    )
    # The first call loads the provider's kernels; the impl's eager entry is then the
    # launcher itself, which is what "impl called directly" times.
    rms_norm(*args)
    selected = rms_norm.dispatch(*args)
    direct = selected.eager_fn
    predicate = selected.supports_args or (lambda *a: True)
    torch_op = rms_norm.torch_op
    grad_args: tuple[Any, ...] = (args[0].clone().requires_grad_(), *args[1:])
    results = []
    with _twin_with_rejecting_first(selected) as twin:
        for mode, ctx in (("inference_mode", torch.inference_mode), ("grad on", torch.enable_grad)):
            with ctx():
                fns = dict(
                    zip(
                        CANDIDATES,
                        (
                            lambda: direct(*args),
                            lambda: direct(*args),
                            lambda: predicate(*args),
                            lambda: rms_norm(*args),
                            lambda: torch_op(*args),
                            lambda: twin(*args),
                        ),
                        strict=True,
                    )
                )
                if mode == "grad on":
                    fns[GRAD_INPUT] = lambda: rms_norm(*grad_args)
                samples = interleave(
                    fns, rounds=rounds, number=number, on_round=on_round, settle=_settle(device)
                )
            results.append(
                DispatchResult(
                    mode,
                    selected.provider,
                    {name: samples.median(name) * 1e6 for name in fns},
                    {name: samples.paired_difference(name, DIRECT) * 1e6 for name in fns},
                )
            )
    return results
