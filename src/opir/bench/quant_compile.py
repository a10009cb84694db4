"""``opir bench compile --quant``: a W8A8 decoder eager, ``torch.compile``, ``opir.compile``.

The decoder (:class:`QuantDecoder`) is written as a user writes a quantised model
with opir's layers: ``RMSNorm`` and :class:`opir.layers.QuantLinear` (int8 on a
CPU, fp8 e4m3fn on a GPU; dynamic per-token activations), Hugging Face-style
residual adds and a SwiGLU over a merged ``gate_up`` projection
(``F.silu(gate) * up``). Attention is stood in for by one QuantLinear.

Variants, timed interleaved: eager (each opir op dispatched at run time);
``torch.compile`` of the same model (Inductor compiles the plain torch code around
the opir ops, which it keeps as opaque calls: no fusion, no lowering);
``opir.compile`` with the platform's ``fuse_quant`` default; and ``opir.compile``
with ``fuse_quant="never"`` (the norm/activation -> quant fusion off). Every
opir.compile variant reports the fusions fired in its graph.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

import opir
from opir.bench.compile import time_variants
from opir.bench.timing import interleave
from opir.layers import QuantLinear, RMSNorm

EAGER = "eager (opir ops)"
TORCH = "torch.compile"
OPIR = "opir.compile"
NO_QUANT_FUSION = "opir.compile, fuse_quant='never'"


class _QuantLayer(nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype, quant: torch.dtype, device) -> None:
        super().__init__()

        def linear(n_in: int, n_out: int) -> QuantLinear:
            dense = nn.Linear(n_in, n_out, bias=False, dtype=dtype, device=device)
            return QuantLinear.from_linear(dense, quant)

        self.input_norm = RMSNorm(hidden, dtype=dtype).to(device)
        self.post_norm = RMSNorm(hidden, dtype=dtype).to(device)
        self.attn = linear(hidden, hidden)
        self.gate_up = linear(hidden, 4 * hidden)
        self.down = linear(2 * hidden, hidden)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor):
        residual = hidden + residual  # Hugging Face style: add, then norm
        h = self.attn(self.input_norm(residual))
        residual = h + residual
        gate, up = self.gate_up(self.post_norm(residual)).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up), residual


class QuantDecoder(nn.Module):
    """``layers`` W8A8 decoder layers and a final norm (weights quantised per channel)."""

    def __init__(
        self,
        hidden: int = 1024,
        layers: int = 4,
        dtype: torch.dtype = torch.bfloat16,
        quant: torch.dtype = torch.int8,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _QuantLayer(hidden, dtype, quant, device) for _ in range(layers)
        )
        self.final_norm = RMSNorm(hidden, dtype=dtype).to(device)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, RMSNorm) and module.weight is not None:
                    module.weight.uniform_(0.5, 1.5)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = torch.zeros_like(hidden)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return self.final_norm(hidden + residual)


@dataclasses.dataclass(frozen=True)
class QuantCompileResult:
    tokens: int
    median_ms: dict[str, float]
    ratio_to_plain: dict[str, float]  # median per-round ratio to torch.compile (as bench.compile)
    fusions: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    unfused: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    providers: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    spread: dict[str, float] = dataclasses.field(default_factory=dict)


def run(
    *,
    tokens: Sequence[int] = (1, 16, 256),
    hidden: int = 1024,
    layers: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    rounds: int = 15,
    device: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[QuantCompileResult]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quant = torch.int8 if device == "cpu" else torch.float8_e4m3fn
    torch.manual_seed(0)
    model = QuantDecoder(hidden, layers, dtype, quant, device).eval()
    torch._dynamo.reset()
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        EAGER: model,
        TORCH: torch.compile(model, dynamic=True),
        OPIR: opir.compile(model, dynamic=True),
        NO_QUANT_FUSION: opir.compile(model, options={"fuse_quant": "never"}, dynamic=True),
    }
    results = []
    with torch.inference_mode():
        for count in tokens:
            x = torch.randn(count, hidden, dtype=dtype, device=device)
            reference = model(x)
            for name, fn in variants.items():
                if on_step is not None:
                    on_step(f"{name}, {count} tokens (first call compiles)")
                # sanity: every variant computes the same model (a quantisation step
                # may land one int8 level apart where fused norms round differently)
                torch.testing.assert_close(fn(x).float(), reference.float(), atol=0.5, rtol=0.1)
            samples, reports = time_variants(variants, x, rounds)
            results.append(
                QuantCompileResult(
                    count,
                    {name: samples.median(name) * 1e3 for name in variants},
                    {name: samples.paired_ratio(name, TORCH) for name in variants},
                    {name: dict(r.fusions) for name, r in reports.items()},
                    {
                        name: [f"{u.op} {u.module or u.node}: {u.reason}" for u in r.unfused]
                        for name, r in reports.items()
                    },
                    {
                        name: sorted({(e.op, e.provider) for e in r.lowered})
                        for name, r in reports.items()
                    },
                    {name: samples.spread(name) for name in variants},
                )
            )
    return results


def norm_quant_decision(
    hidden: int = 4096, tokens: Sequence[int] = (1, 16, 256), rounds: int = 15
) -> None:
    """Print the measurement behind ``FUSE_QUANT_DEFAULT["cpu"]``: ``rms_norm ->
    dynamic_quant`` unfused and lowered to ``native`` (Inductor generates and fuses the
    pair), against the fused ``rms_norm_dynamic_quant`` on the ``cpu`` kernel and on
    ``native``; bf16 -> int8, and how many int8 values differ from eager native."""
    from opir.ops import dynamic_quant, rms_norm, rms_norm_dynamic_quant

    def unfused(x: torch.Tensor, w: torch.Tensor):
        return dynamic_quant(rms_norm(x, w, 1e-6), torch.int8)

    def fused(x: torch.Tensor, w: torch.Tensor):
        return rms_norm_dynamic_quant(x, w, 1e-6, torch.int8)

    pins = {"rms_norm": ["native"], "dynamic_quant": ["native"]}
    base = "unfused, Inductor (native)"
    variants = {
        base: opir.compile(unfused, options={"fuse": False, "priority": pins}, dynamic=True),
        "fused, cpu kernel": opir.compile(
            fused, options={"priority": {"rms_norm_dynamic_quant": ["cpu"]}}, dynamic=True
        ),
        "fused, native": opir.compile(
            fused, options={"priority": {"rms_norm_dynamic_quant": ["native"]}}, dynamic=True
        ),
    }
    torch.manual_seed(0)
    with torch.inference_mode():
        for count in tokens:
            x = torch.randn(count, hidden, dtype=torch.bfloat16)
            w = torch.rand(hidden, dtype=torch.bfloat16) + 0.5
            with opir.priority(pins):
                want = unfused(x, w)
            for name, fn in variants.items():
                q, scale = fn(x, w)
                print(
                    f"  {name}: int8 values differing from eager native "
                    f"{int((q != want[0]).sum())} of {q.numel()}, scales "
                    f"{int((scale != want[1]).sum())} of {scale.numel()}"
                )
            samples = interleave(
                {name: functools.partial(fn, x, w) for name, fn in variants.items()},
                rounds=rounds,
                number=max(1, 40 // max(1, count // 16)),
                warmup=3,
            )
            print(
                f"tokens {count}, hidden {hidden}: "
                + "; ".join(
                    f"{n} {samples.median(n) * 1e3:.3f} ms ({samples.paired_ratio(n, base):.2f}x)"
                    for n in variants
                )
            )
