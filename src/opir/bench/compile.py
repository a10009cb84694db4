"""``opir bench compile``: eager opir vs opir.compile vs plain torch.compile.

The same decoder stack (``bench/models.py``), timed interleaved per token
count: eager with opir ops (default eager priority), ``opir.compile`` with
the norms (and the SwiGLU activation and the rotary ops, where the provider has
them) lowered to the ``cpu`` kernels and with them lowered to ``native`` (which Inductor then fuses
with the neighbouring ops), and ``torch.compile`` (Inductor) of the twin model
written in plain PyTorch. All compiled variants
use ``dynamic=True``, so one compile serves every token count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

import opir
from opir.bench.models import twin_models
from opir.bench.timing import Samples, interleave

EAGER = "eager (opir ops)"
PLAIN = "torch.compile (plain PyTorch model)"
NORM_OPS = ("rms_norm", "fused_add_rms_norm")
# the SwiGLU MLP's activation, the attention's RoPE and what fusion makes of q/k norms + RoPE
LOWERED_OPS = (*NORM_OPS, "silu_mul", "rotary_pos_emb", "qk_norm_rotary_pos_emb")


def lowered_to(provider: str) -> str:
    return f"opir.compile, norms lowered to {provider}"


@dataclasses.dataclass(frozen=True)
class CompileResult:
    tokens: int
    median_ms: dict[str, float]
    ratio_to_plain: dict[str, float]  # median per-round ratio to torch.compile
    # per opir.compile variant: fusions fired in its (Inductor-compiled) graph, and
    # the norms left unfused with the reason
    fusions: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    unfused: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    # relative spread between rounds (IQR / median) per variant: the noise floor
    spread: dict[str, float] = dataclasses.field(default_factory=dict)


def time_variants(
    variants: Mapping[str, Callable[[torch.Tensor], object]], x: torch.Tensor, rounds: int
) -> tuple[Samples, dict[str, Any]]:
    """Interleaved timing of every variant on ``x`` (fewer calls per round for more
    tokens), and the last compile report of each variant that has one."""
    samples = interleave(
        {name: functools.partial(fn, x) for name, fn in variants.items()},
        rounds=rounds,
        number=max(1, 20 // max(1, x.shape[0] // 16)),
        warmup=3,
    )
    reports = {
        name: fn.opir_report.last for name, fn in variants.items() if hasattr(fn, "opir_report")
    }
    return samples, reports


def run(
    *,
    tokens: Sequence[int] = (1, 16, 256),
    hidden: int = 1024,
    layers: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    providers: Sequence[str] = ("cpu", "native"),
    rounds: int = 15,
    on_step: Callable[[str], None] | None = None,
) -> list[CompileResult]:
    with_opir, plain = twin_models(hidden, layers, dtype)
    torch._dynamo.reset()
    compiled_plain = torch.compile(plain, dynamic=True)
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {EAGER: with_opir}
    for provider in providers:
        fixed = {
            name: [provider]
            for name in LOWERED_OPS
            if provider in getattr(opir.ops, name).impls or provider == "native"
        }
        variants[lowered_to(provider)] = opir.compile(
            with_opir, options={"priority": fixed}, dynamic=True
        )
    variants[PLAIN] = compiled_plain

    results = []
    with torch.inference_mode():
        for count in tokens:
            x = torch.randn(count, hidden, dtype=dtype)
            reference = with_opir(x)
            for name, fn in variants.items():
                if on_step is not None:
                    on_step(f"{name}, {count} tokens (first call compiles)")
                got = fn(x)
                tol = opir.ops.rms_norm.tolerance(dtype)
                # sanity: every variant computes the same model
                torch.testing.assert_close(got, reference, atol=50 * tol.atol, rtol=10 * tol.rtol)
            samples, reports = time_variants(variants, x, rounds)
            results.append(
                CompileResult(
                    count,
                    {name: samples.median(name) * 1e3 for name in variants},
                    {name: samples.paired_ratio(name, PLAIN) for name in variants},
                    {name: dict(r.fusions) for name, r in reports.items()},
                    {
                        name: [f"{u.module or u.node}: {u.reason}" for u in r.unfused]
                        for name, r in reports.items()
                    },
                    {name: samples.spread(name) for name in variants},
                )
            )
    return results
