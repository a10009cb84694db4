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

With a CUDA GPU the tensors live on it and each candidate's calls of a round
are timed with CUDA events (launches queue back to back; one
``torch.cuda.synchronize`` per round, outside the timed calls); the copy is a
device-to-device copy of the same bytes (the caching allocator makes
``clone()`` allocation free, so both ops use ``copy_``-like costs). A provider
whose predicate rejects a variant (FlashInfer with fp32, say) is left out of
that row.

Four op families, one table per op: the RMSNorm family (``rms_norm``,
``fused_add_rms_norm``; ``rms_norm_gated`` with ``--full``) over ``TOKENS`` x
``HIDDEN`` tokens x hidden size, and the gated-MLP activations
(``silu_and_mul``, ``gelu_and_mul`` erf and tanh: the ops ``opir bench
activations`` compares with vLLM, on its shapes; every other activation op with
``--full``) over tokens x intermediate size ``d`` (x is ``[tokens, 2 * d]``).
An activation op returns a new tensor, so its copy is a ``clone()`` of
read 2d + write d elements per token.

The rotary family (``rotary_embedding``, neox and GPT-J) runs on vLLM's CPU
kernel's shapes: tokens x 32 query / 8 kv heads x head size 128, bf16 and fp32,
a cache of the query's dtype (vLLM refuses an fp32 cache with a bf16 query),
in place. With ``--vllm`` (vLLM's CPU ``_C`` loaded as ``opir bench
activations --vllm`` loads it) two more columns: ``opir``, the public
``rotary_embedding.maybe_inplace`` call (eager dispatch included), and
``vllm``, ``torch.ops._C.rotary_embedding`` in place on its own copies of the
same inputs; the target is opir <= 1.0x vLLM on every shape.

The quantization family (int8, bf16 input, hidden 4096): ``static_quant``,
``dynamic_quant`` (per token), and the fused ``rms_norm_quant``,
``fused_add_rms_norm_quant`` and ``silu_and_mul_quant`` (their dynamic forms
with ``--full``). Each fused op also gets an ``unfused`` candidate: the cpu
impls of the ops it fuses, called one after the other (e.g. cpu ``rms_norm``
then cpu ``static_quant``). With ``vllm=True`` (``opir bench kernels --vllm``,
in a Python with vLLM's CPU wheel) ``static_quant`` and ``dynamic_quant`` also
time vLLM's ``torch.ops._C.static_scaled_int8_quant`` /
``dynamic_scaled_int8_quant``, which write into a preallocated ``out`` (so
vLLM's time excludes the allocation opir's includes).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

import opir.ops as _ops
from opir.bench import activations as _activations
from opir.bench.timing import (
    Samples,
    bytes_moved,
    calls_per_round,
    check_counts,
    copy_baseline,
    interleave,
)
from opir.core.op import Op
from opir.ops import fused_add_rms_norm, rms_norm
from opir.ops.activations import OPS as ACTIVATION_OPS
from opir.ops.quant import (
    dynamic_quant,
    fused_add_rms_norm_quant,
    rms_norm_quant,
    silu_and_mul_quant,
    static_quant,
)
from opir.ops.rotary import rotary_embedding

COPY = "copy"
PROVIDERS = ("native", "cpu", "inductor", "triton", "flashinfer")
TOKENS = (1, 16, 256, 4096)
HIDDEN = (1024, 4096)
# (label, x dtype, weight dtype)
VARIANTS = (
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("fp32", torch.float32, torch.float32),
    ("gemma bf16 x, fp32 w", torch.bfloat16, torch.float32),
)
# activations: x dtype only (no weight)
ACTIVATION_VARIANTS = (("bf16", torch.bfloat16, None), ("fp32", torch.float32, None))

Variant = tuple[str, torch.dtype, "torch.dtype | None"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One op called one way: ``inputs`` are extra input-generator keywords
    (``approximate="tanh"``), shown after the dtype in the row's label."""

    op: Op
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    """More input-generator keywords, the same on every row (not in the label)."""

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.inputs.items())


@dataclasses.dataclass(frozen=True)
class Family:
    """Ops timed on the same shapes, checked against the same targets."""

    name: str  # "norm" or "activation"
    cases: tuple[Case, ...]
    variants: tuple[Variant, ...]
    tokens: tuple[int, ...]
    hidden: tuple[int, ...]  # hidden size (norms) or intermediate size d (activations)

    @property
    def size(self) -> int:
        return len(self.cases) * len(self.variants) * len(self.tokens) * len(self.hidden)


def _cases(ops: Sequence[Op]) -> tuple[Case, ...]:
    return tuple(Case(op) for op in ops)


NORMS = Family("norm", _cases((rms_norm, fused_add_rms_norm)), VARIANTS, TOKENS, HIDDEN)
# the ops and shapes ``opir bench activations`` times against vLLM
ACTIVATIONS = Family(
    "activation",
    tuple(Case(getattr(_ops, name), dict(kw)) for name, kw, _ in _activations.OPS),
    ACTIVATION_VARIANTS,
    _activations.TOKENS,
    _activations.INTERMEDIATE,
)
# vLLM's CPU rotary_embedding shapes (issue 18): 32 query / 8 kv heads x head size 128
ROTARY_HEADS = {"num_heads": 32, "num_kv_heads": 8, "max_position": 4096}
ROTARY = Family(
    "rotary",
    tuple(Case(rotary_embedding, {"is_neox_style": neox}, ROTARY_HEADS) for neox in (True, False)),
    ACTIVATION_VARIANTS,
    (1, 16, 256, 2048),
    (128,),
)
VLLM = "vllm"
OPIR = "opir"
# int8 quantization (issue 19): vLLM's CPU int8 kernels' shapes, bf16 input
QUANT = Family(
    "quant",
    _cases(
        (static_quant, dynamic_quant, rms_norm_quant, fused_add_rms_norm_quant, silu_and_mul_quant)
    ),
    (("bf16", torch.bfloat16, None),),
    (1, 16, 256, 2048),
    (4096,),  # silu_and_mul_quant: d = 4096 (x is [tokens, 8192])
)
FAMILIES = (NORMS, ACTIVATIONS, ROTARY, QUANT)
# --full: every op with kernels (all_reduce_rms_norm needs a process group: not here)
_MORE_ACTIVATIONS = [op for op in ACTIVATION_OPS if all(c.op is not op for c in ACTIVATIONS.cases)]
FULL = (
    dataclasses.replace(NORMS, cases=(*NORMS.cases, Case(_ops.rms_norm_gated))),
    dataclasses.replace(ACTIVATIONS, cases=(*ACTIVATIONS.cases, *_cases(_MORE_ACTIVATIONS))),
    ROTARY,
    dataclasses.replace(
        QUANT,
        cases=(
            *QUANT.cases,
            *_cases(
                (
                    _ops.rms_norm_dynamic_quant,
                    _ops.fused_add_rms_norm_dynamic_quant,
                    _ops.silu_and_mul_dynamic_quant,
                )
            ),
        ),
    ),
)
# --short (``make run``): a couple of shapes per op
_SHORT: dict[str, dict[str, Any]] = {
    "norm": {"tokens": (1, 256, 4096), "hidden": (4096,), "variants": VARIANTS[::2]},
    "activation": {"tokens": _activations.SHORT_TOKENS, "hidden": _activations.SHORT_INTERMEDIATE},
    "rotary": {"tokens": (1, 256)},
    "quant": {"tokens": (1, 256)},
}


def shorten(family: Family) -> Family:
    """The family on its ``--short`` shapes."""
    return dataclasses.replace(family, **_SHORT[family.name])


@dataclasses.dataclass(frozen=True)
class KernelResult:
    op: str
    variant: str
    tokens: int
    hidden: int
    bytes_moved: int
    median_us: dict[str, float]  # COPY and each provider
    # relative spread between rounds (IQR / median) per candidate: the noise floor
    spread: dict[str, float] = dataclasses.field(default_factory=dict)
    family: str = "norm"

    def noise(self, *names: str) -> float:
        """Relative noise of a ratio of these candidates (their spreads added; 0 if unknown)."""
        spreads = [self.spread.get(n, float("nan")) for n in names]
        return sum(s for s in spreads if s == s)

    def has(self, name: str) -> bool:
        return name in self.median_us

    def gbps(self, name: str) -> float:
        return self.bytes_moved / (self.median_us[name] * 1e-6) / 1e9

    def of_copy(self, name: str) -> float:
        """Fraction of copy bandwidth achieved (1.0 = as fast as copying the bytes)."""
        return self.median_us[COPY] / self.median_us[name]

    def speedup(self, name: str, over: str = "native") -> float:
        return self.median_us[over] / self.median_us[name]


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


def interleave_cuda(
    candidates: dict[str, Callable[[], object]], *, rounds: int, number: int, warmup: int
) -> Samples:
    """Like ``timing.interleave`` but timed on the GPU with CUDA events."""
    check_counts(rounds=rounds, number=number)
    names = list(candidates)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        events = []
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            events.append((name, start, end))
        torch.cuda.synchronize()  # once per round, outside the timed calls
        for name, start, end in events:
            per_round[name].append(start.elapsed_time(end) * 1e-3 / number)
    return Samples(per_round)


def default_device() -> str:
    """``cuda`` when a CUDA/ROCm GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def measure(
    op: Op | Case,
    variant: Variant,
    tokens: int,
    hidden: int,
    providers: Sequence[str],
    rounds: int,
    device: str = "cpu",
    family: str = "norm",
    vllm: bool = False,
) -> KernelResult:
    case = op if isinstance(op, Case) else Case(op)
    op = case.op
    label, dtype, weight_dtype = variant
    shape_kw: dict[str, Any] = {
        "num_tokens": tokens,
        "hidden_size": hidden,
        **case.inputs,
        **case.fixed,
    }
    if weight_dtype is not None:
        shape_kw["weight_dtype"] = weight_dtype
    args = op.sample_inputs(dtype=dtype, device=device, **shape_kw)
    moved = bytes_moved(op, tuple(args))
    cuda = device != "cpu"
    candidates: dict[str, Callable[[], object]] = {
        COPY: copy_baseline(moved, device, fresh=not (op.allow_inplace or cuda))
    }
    args = op.complete_args(tuple(args))  # every argument, as impls receive them
    for provider in providers:
        impl = op.impls[provider]
        if impl.supports_args is not None and not impl.supports_args(*args):
            continue  # this provider does not take this variant
        call_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        impl.eager_fn(*call_args)  # warm up (builds / compiles / loads on first use)
        eager = op.impls[provider].eager_fn  # after loading: the launcher itself
        candidates[provider] = functools.partial(eager, *call_args)
    if vllm and op is rotary_embedding and not cuda:
        candidates.update(_vllm_rotary(args))
    if family == "quant" and not cuda:
        candidates.update(quant_extras(op, args, vllm))
    number = min(calls_per_round(fn, cuda=cuda) for fn in candidates.values())
    if cuda:
        samples = interleave_cuda(candidates, rounds=rounds, number=number, warmup=2)
    else:
        samples = interleave(candidates, rounds=rounds, number=number, warmup=2)
    return KernelResult(
        op.name,
        f"{label}, {case.label}" if case.label else label,
        tokens,
        hidden,
        moved,
        {name: samples.median(name) * 1e6 for name in candidates},
        {name: samples.spread(name) for name in candidates},
        family,
    )


def _vllm_rotary(args: tuple) -> dict[str, Callable[[], object]]:
    """opir's public in-place call and vLLM's CPU kernel, each on its own copies
    (``torch.ops._C`` must be loaded: ``activations.load_vllm``)."""
    positions, query, key, head_size, cache, neox, _ = args
    mine = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    q, k = query.clone(), key.clone()
    kernel = torch.ops._C.rotary_embedding
    return {
        OPIR: functools.partial(cast(Callable[..., object], rotary_embedding.maybe_inplace), *mine),
        VLLM: lambda: kernel(positions, q, k, head_size, cache, neox),
    }


def run(
    *,
    ops: Sequence[Op] = (rms_norm, fused_add_rms_norm),
    variants: Sequence[Variant] = VARIANTS,
    tokens: Sequence[int] = TOKENS,
    hidden: Sequence[int] = HIDDEN,
    families: Sequence[Family] | None = None,
    providers: Sequence[str] = PROVIDERS,
    rounds: int = 9,
    on_result: Callable[[KernelResult], None] | None = None,
    device: str | None = None,
    vllm: bool = False,
) -> list[KernelResult]:
    """Time every family's cases on its shapes (``families``, e.g. ``FAMILIES``); without
    ``families``, the norm family made of ``ops`` on ``variants`` x ``tokens`` x ``hidden``.
    ``vllm``: also time vLLM's CPU kernels where a family has one (rotary; load them
    first with ``opir.bench.activations.load_vllm``)."""
    check_counts(rounds=rounds)
    if families is None:
        families = [Family("norm", _cases(ops), tuple(variants), tuple(tokens), tuple(hidden))]
    all_ops = [c.op for f in families for c in f.cases]
    unknown = [p for p in providers if all(p not in op.impls for op in all_ops)]
    if unknown:
        known = sorted({p for op in all_ops for p in op.impls})
        raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(known)}")
    device = device or default_device()
    steady_allocator()
    results = []
    with torch.inference_mode():
        for family in families:
            for case in family.cases:
                usable = [p for p in providers if _usable(p, case, device)]
                shapes = itertools.product(family.variants, family.tokens, family.hidden)
                for variant, t, h in shapes:
                    result = measure(case, variant, t, h, usable, rounds, device, family.name, vllm)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results


UNFUSED = "unfused"

# fused op -> (the op it normalises / activates with, how its args split between them)
_UNFUSED: dict[str, Callable[[tuple], tuple[tuple[Op, tuple], ...]]] = {
    # (x, weight, eps, scale, dtype, weight_bias): rms_norm then static_quant
    "rms_norm_quant": lambda a: ((rms_norm, (a[0], a[1], a[2], None, a[5], False)),),
    "rms_norm_dynamic_quant": lambda a: ((rms_norm, (a[0], a[1], a[2], None, a[5], False)),),
    "fused_add_rms_norm_quant": lambda a: (
        (fused_add_rms_norm, (a[0], a[1], a[2], a[3], None, a[6], False)),
    ),
    "fused_add_rms_norm_dynamic_quant": lambda a: (
        (fused_add_rms_norm, (a[0], a[1], a[2], a[3], None, a[6], False)),
    ),
    "silu_and_mul_quant": lambda a: ((_ops.silu_and_mul, (a[0],)),),
    "silu_and_mul_dynamic_quant": lambda a: ((_ops.silu_and_mul, (a[0],)),),
}


def quant_extras(op: Op, args: tuple, vllm: bool) -> dict[str, Callable[[], object]]:
    """The quant family's extra candidates: ``unfused`` (the cpu impls of the ops a fused
    op fuses, one after the other; the in-place add+norm on donated buffers, as the fused
    op's) and, with ``vllm``, vLLM's CPU int8 kernels for the base ops."""
    extras: dict[str, Callable[[], object]] = {}
    first = _UNFUSED.get(op.name)
    if first is not None and "cpu" in op.impls:
        ((norm, norm_args),) = first(args)
        norm_fn = norm.impls["cpu"].eager_fn
        norm_fn(*norm_args)  # loads/builds
        dynamic = "dynamic" in op.name
        quant = dynamic_quant if dynamic else static_quant
        quant_fn = quant.impls["cpu"].eager_fn
        qdtype = next(a for a in args if isinstance(a, torch.dtype))
        scale = (
            None
            if dynamic
            else next(a for a in args[1:] if isinstance(a, torch.Tensor) and a.numel() == 1)
        )

        def unfused(norm_fn=norm_fn, norm_args=norm_args, quant_fn=quant_fn):
            y = norm_fn(*norm_args)
            y = y[0] if isinstance(y, tuple) else y
            return quant_fn(y, qdtype, True, None) if dynamic else quant_fn(y, scale, qdtype)

        extras[UNFUSED] = unfused
    if vllm and op.name in ("static_quant", "dynamic_quant") and args[0].dtype != torch.float32:
        x = args[0]
        out = torch.empty(x.shape, dtype=torch.int8)
        if op.name == "static_quant" and args[2] is torch.int8:
            kernel = torch.ops._C.static_scaled_int8_quant
            extras[VLLM] = functools.partial(kernel, out, x, args[1], None)
        elif op.name == "dynamic_quant" and args[1] is torch.int8 and args[2]:
            kernel = torch.ops._C.dynamic_scaled_int8_quant
            scales = torch.empty(*x.shape[:-1], 1)
            extras[VLLM] = functools.partial(kernel, out, x, scales, None)
    return extras


def _usable(provider: str, case: Case, device: str) -> bool:
    """Registered and supported for the op, on a kernel that runs on ``device``
    (Triton's CPU interpreter is a correctness tool, not something to time)."""
    impl = case.op.impls.get(provider)
    if impl is None or not impl.supported:
        return False
    if provider == "triton" and device == "cpu":
        return False
    probe = case.op.sample_inputs(
        dtype=torch.bfloat16,
        num_tokens=1,
        hidden_size=64,
        device=device,
        **case.inputs,
        **case.fixed,
    )
    return impl.supports_args is None or impl.supports_args(*probe)


@dataclasses.dataclass(frozen=True)
class Target:
    description: str
    failures: list[str]
    # per failure: True when the shortfall is smaller than the measured round-to-round noise
    within_noise: list[bool] = dataclasses.field(default_factory=list)

    @property
    def met(self) -> bool:
        return not self.failures

    @property
    def missed_beyond_noise(self) -> bool:
        """Missed on at least one shape by more than the noise of that measurement."""
        return any(not quiet for quiet in self.within_noise) or (
            bool(self.failures) and not self.within_noise
        )


def noise_floor(results: Sequence[KernelResult]) -> tuple[float, float]:
    """(median, max) relative spread between rounds over every measured candidate."""
    import statistics

    spreads = [s for r in results for s in r.spread.values() if s == s]
    if not spreads:
        return float("nan"), float("nan")
    return statistics.median(spreads), max(spreads)


def _target(description: str, misses: list[tuple[str, bool]]) -> Target:
    return Target(description, [m for m, _ in misses], [quiet for _, quiet in misses])


def check_targets(results: Sequence[KernelResult]) -> list[Target]:
    """The issues' targets, evaluated on measured results: the norm family's for the
    cpu provider (and triton's on a GPU), and cpu faster than native on every
    activation shape."""

    def shape(r: KernelResult) -> str:
        return f"{r.op} {r.variant} {r.tokens}x{r.hidden}"

    def ratio_misses(rows, name, over, threshold, strict=False):
        """Rows where median[over]/median[name] falls short of threshold, with the noise."""
        misses = []
        for r in rows:
            ratio = r.speedup(name, over)
            if ratio < threshold or (strict and ratio <= threshold):
                quiet = ratio * (1 + r.noise(name, over)) >= threshold
                shown = f"{ratio:.0%} of copy bandwidth" if over == COPY else f"{ratio:.2f}x"
                misses.append((f"{shape(r)}: {shown}", quiet))
        return misses

    def having(rows, *names):
        return [r for r in rows if all(r.has(n) for n in names)]

    norms = [r for r in results if r.family == "norm"]
    targets = []
    if rows := having(norms, "triton", "native"):  # the GPU goals (issue 11)
        misses = ratio_misses(rows, "triton", "native", 1.0, strict=True)
        targets.append(_target("norms: triton faster than native on every shape", misses))
        big = [r for r in rows if r.bytes_moved >= 16 * 2**20]
        misses = ratio_misses(big, "triton", COPY, 0.85)
        targets.append(_target("norms: triton >= 85% of copy bandwidth at >= 16 MiB", misses))
    if rows := having(norms, "cpu", "native"):
        misses = ratio_misses(rows, "cpu", "native", 3.0)
        targets.append(_target("norms: cpu >= 3x faster than native on every shape", misses))
    if rows := having(norms, "cpu", "inductor"):
        rows = [r for r in rows if r.tokens <= 256]
        misses = ratio_misses(rows, "cpu", "inductor", 1.0, strict=True)
        targets.append(_target("norms: cpu faster than inductor up to 256 tokens", misses))
    if rows := having(norms, "cpu"):
        big = [r for r in rows if r.bytes_moved >= 16 * 2**20]
        misses = ratio_misses(big, "cpu", COPY, 0.6)
        description = "norms: cpu >= 60% of copy bandwidth on shapes moving >= 16 MiB"
        targets.append(_target(description, misses))
    activations = [r for r in results if r.family == "activation"]
    if rows := having(activations, "cpu", "native"):  # issue 17
        misses = ratio_misses(rows, "cpu", "native", 1.0, strict=True)
        targets.append(_target("activations: cpu faster than native on every shape", misses))
    rotary = [r for r in results if r.family == "rotary"]
    if rows := having(rotary, OPIR, VLLM):  # issue 18
        misses = ratio_misses(rows, OPIR, VLLM, 1.0)
        description = "rotary: opir's maybe_inplace <= 1.0x vLLM's CPU kernel on every shape"
        targets.append(_target(description, misses))
    quants = [r for r in results if r.family == "quant"]
    if rows := having(quants, "cpu", VLLM):  # issue 19
        misses = ratio_misses(rows, "cpu", VLLM, 1.0)
        targets.append(_target("quant: cpu <= 1.0x the time of vLLM's CPU int8 kernels", misses))
    if rows := having(quants, "cpu", UNFUSED):
        misses = ratio_misses(rows, "cpu", UNFUSED, 1.0, strict=True)
        targets.append(_target("quant: fused cpu faster than the unfused cpu sequence", misses))
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
    names = list(dict.fromkeys(n for r in results for n in r.median_us))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (op, variant) in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in results if (r.op, r.variant) == (op, variant)]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(rows))]
            ax.bar(xs, [r.gbps(name) if r.has(name) else 0 for r in rows], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"{r.tokens}x{r.hidden}" for r in rows])
        ax.set_ylabel("GB/s")
        ax.set_title(f"{op}, {variant}")
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
