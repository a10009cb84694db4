"""``opir bench kernels``: kernel time per provider next to a plain copy.

For each op / dtype variant / shape, interleaved in one run: a plain copy
that moves the same number of bytes as the op (read + write) and allocates
what the op allocates, and each provider's impl function called directly (no
dispatch; ``fused_add_rms_norm`` uses the in-place kernels the layers use, on
donated buffers). The copy is ``clone()`` for ops that return new tensors —
such an op writes a freshly allocated output on every call, and the page
faults of a fresh multi-MiB block cost more than the kernel here, a cost no
kernel can avoid — and ``copy_()`` into existing memory for in-place kernels.
Reported: median µs, GB/s (bytes the op must move / time), the fraction of
copy bandwidth, and the speed-up over ``native``.

glibc adjusts its mmap threshold as blocks are freed, so the same 16 MiB
allocation is sometimes fresh page-faulting memory and sometimes reused heap,
which made functional rows bimodal. The benchmark therefore pins the
threshold (to glibc's maximum, 32 MiB) and keeps freed memory for the whole
run: every candidate allocates under the same stable policy.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import torch

from opir.bench.timing import interleave
from opir.core.op import Op
from opir.ops import fused_add_rms_norm, rms_norm

COPY = "copy"
PROVIDERS = ("native", "cpu", "inductor")
TOKENS = (1, 16, 256, 4096)
HIDDEN = (1024, 4096)
# (label, x dtype, weight dtype)
VARIANTS = (
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("fp32", torch.float32, torch.float32),
    ("gemma bf16 x, fp32 w", torch.bfloat16, torch.float32),
)


@dataclasses.dataclass(frozen=True)
class KernelResult:
    op: str
    variant: str
    tokens: int
    hidden: int
    bytes_moved: int
    median_us: dict[str, float]  # COPY and each provider

    def gbps(self, name: str) -> float:
        return self.bytes_moved / (self.median_us[name] * 1e-6) / 1e9

    def of_copy(self, name: str) -> float:
        """Fraction of copy bandwidth achieved (1.0 = as fast as copying the bytes)."""
        return self.median_us[COPY] / self.median_us[name]

    def speedup(self, name: str, over: str = "native") -> float:
        return self.median_us[over] / self.median_us[name]


def _bytes_moved(op: Op, args: tuple) -> int:
    x, weight = args[0], args[2] if op is fused_add_rms_norm else args[1]
    activations = 2 if op is fused_add_rms_norm else 1  # x (and residual)
    per_activation = x.numel() * x.element_size()
    weight_bytes = 0 if weight is None else weight.numel() * weight.element_size()
    return per_activation * activations * 2 + weight_bytes  # read + write each activation


def steady_allocator() -> bool:
    """Pin glibc's mmap/trim thresholds (see module docstring); False if not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 * 2**20) == 1
    return ok and mallopt(m_trim_threshold, 2**30) == 1


def _calls_per_round(fn: Callable[[], object], budget_s: float = 2e-3) -> int:
    import time

    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return max(1, min(2000, int(budget_s / max(elapsed, 1e-7))))


def measure(
    op: Op,
    variant: tuple[str, torch.dtype, torch.dtype],
    tokens: int,
    hidden: int,
    providers: Sequence[str],
    rounds: int,
) -> KernelResult:
    label, dtype, weight_dtype = variant
    args = op.sample_inputs(
        dtype=dtype, weight_dtype=weight_dtype, num_tokens=tokens, hidden_size=hidden
    )
    moved = _bytes_moved(op, args)
    source = torch.empty(moved // 2, dtype=torch.uint8)
    if op.allow_inplace:
        target = torch.empty_like(source)
        candidates: dict[str, Callable[[], object]] = {COPY: lambda: target.copy_(source)}
    else:
        candidates = {COPY: source.clone}
    for provider in providers:
        fn = op.impls[provider].fn
        call_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        fn(*call_args)  # warm up (builds / compiles on first use)
        candidates[provider] = lambda fn=fn, a=call_args: fn(*a)
    number = min(_calls_per_round(fn) for fn in candidates.values())
    samples = interleave(candidates, rounds=rounds, number=number, warmup=2)
    return KernelResult(
        op.name,
        label,
        tokens,
        hidden,
        moved,
        {name: samples.median(name) * 1e6 for name in candidates},
    )


def run(
    *,
    ops: Sequence[Op] = (rms_norm, fused_add_rms_norm),
    variants: Sequence[tuple[str, torch.dtype, torch.dtype]] = VARIANTS,
    tokens: Sequence[int] = TOKENS,
    hidden: Sequence[int] = HIDDEN,
    providers: Sequence[str] = PROVIDERS,
    rounds: int = 9,
    on_result: Callable[[KernelResult], None] | None = None,
) -> list[KernelResult]:
    usable = [p for p in providers if all(op.impls[p].supported for op in ops)]
    steady_allocator()
    results = []
    with torch.inference_mode():
        for op, variant, t, h in itertools.product(ops, variants, tokens, hidden):
            result = measure(op, variant, t, h, usable, rounds)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


@dataclasses.dataclass(frozen=True)
class Target:
    description: str
    failures: list[str]

    @property
    def met(self) -> bool:
        return not self.failures


def check_targets(results: Sequence[KernelResult]) -> list[Target]:
    """The issue's targets for the cpu provider, evaluated on measured results."""

    def shape(r: KernelResult) -> str:
        return f"{r.op} {r.variant} {r.tokens}x{r.hidden}"

    have = set(results[0].median_us) if results else set()
    targets = []
    if {"cpu", "native"} <= have:
        slow = [f"{shape(r)}: {r.speedup('cpu'):.1f}x" for r in results if r.speedup("cpu") < 3]
        targets.append(Target("cpu >= 3x faster than native on every shape", slow))
    if {"cpu", "inductor"} <= have:
        slow = [
            f"{shape(r)}: {r.speedup('cpu', 'inductor'):.2f}x"
            for r in results
            if r.tokens <= 256 and r.speedup("cpu", "inductor") <= 1
        ]
        targets.append(Target("cpu faster than inductor up to 256 tokens", slow))
    if "cpu" in have:
        slow = [
            f"{shape(r)}: {r.of_copy('cpu'):.0%}"
            for r in results
            if r.bytes_moved >= 16 * 2**20 and r.of_copy("cpu") < 0.6
        ]
        targets.append(Target("cpu >= 60% of copy bandwidth on shapes moving >= 16 MiB", slow))
    return targets


def plot(results: Sequence[KernelResult], path: str) -> None:
    """GB/s per provider per shape, one panel per op and dtype variant."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib: pip install 'opir[bench]' (make run installs it)"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.op, r.variant) for r in results})
    names = [n for n in results[0].median_us]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (op, variant) in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in results if (r.op, r.variant) == (op, variant)]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(rows))]
            ax.bar(xs, [r.gbps(name) for r in rows], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"{r.tokens}x{r.hidden}" for r in rows])
        ax.set_ylabel("GB/s")
        ax.set_title(f"{op}, {variant}")
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
