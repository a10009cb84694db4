"""``opir bench model``: a Qwen3-0.6B-shaped transformers model, stock vs opir.

Random weights from a config (no downloads): hidden 1024, intermediate 3072,
16/8 heads, head_dim 128, ``layers`` decoder layers. Four variants, timed
interleaved per case (forward at 1/16/256 tokens, ``generate`` of 32 tokens):
stock eager, opir-applied eager (``integrations.transformers.apply`` with
``activations=True``: norms **and** gated-MLP activations, the latter within the
ops' tolerance rather than bit-exact),
``torch.compile(stock)`` and ``opir.compile(applied)``. Compiled variants
compile ``forward`` (``dynamic=True``); ``generate`` runs with the compiled
forward put on a copy of the model. A variant that fails keeps its column and
records the reason instead of a time.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Sequence

import torch

STOCK, APPLIED = "stock eager", "opir.apply eager"
TORCH_COMPILE, OPIR_COMPILE = "torch.compile(stock)", "opir.compile(applied)"
VARIANTS = (STOCK, APPLIED, TORCH_COMPILE, OPIR_COMPILE)


@dataclasses.dataclass(frozen=True)
class ModelResult:
    dtype: str
    case: str  # "forward N tokens" or "generate 32"
    median_ms: dict[str, float]  # variants that ran
    ratio_to_stock: dict[str, float]  # median per-round ratio to stock eager
    failed: dict[str, str]  # variant -> reason
    # relative spread between rounds (IQR / median) per variant: the noise floor
    spread: dict[str, float] = dataclasses.field(default_factory=dict)


def build(layers: int, dtype: torch.dtype) -> torch.nn.Module:
    """The Qwen3-0.6B-shaped model with random weights (``transformers`` needed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _variants(
    stock: torch.nn.Module, rotary: bool = True
) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    import opir
    from opir.integrations.transformers import apply

    applied = copy.deepcopy(stock)
    apply(applied, activations=True, rotary=rotary)  # norms, MLP activations, RoPE
    models, failed = {STOCK: stock, APPLIED: applied}, {}
    for name, base, compile_fn in (
        (TORCH_COMPILE, stock, torch.compile),
        (OPIR_COMPILE, applied, opir.compile),
    ):
        try:
            twin = copy.copy(base)  # shares modules; only forward differs
            twin.forward = compile_fn(base.forward, dynamic=True)
            models[name] = twin
        except Exception as error:
            failed[name] = f"{type(error).__name__}: {error}"[:160]
    return models, failed


def _reason(error: BaseException) -> str:
    """One line: the innermost cause (a backend's error is wrapped by Dynamo)."""
    while True:
        inner = getattr(error, "inner_exception", None) or error.__cause__
        if inner is None:
            break
        error = inner
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    return f"{type(error).__name__}: {lines[0]}"[:160]


def _time(
    dtype_name: str,
    case: str,
    calls: dict[str, Callable[..., object]],  # called without arguments
    failed: dict,
    rounds: int,
    number: int,
) -> ModelResult:
    from opir.bench.timing import interleave

    failed = dict(failed)
    for name, fn in list(calls.items()):
        try:
            fn()  # compile / warm up once, outside the timing
        except Exception as error:
            failed[name] = _reason(error)
            del calls[name]
    samples = interleave(calls, rounds=rounds, number=number, warmup=1)
    return ModelResult(
        dtype_name, case,
        {n: samples.median(n) * 1e3 for n in calls},
        {n: samples.paired_ratio(n, STOCK) for n in calls},
        failed,
        {n: samples.spread(n) for n in calls},
    )  # fmt: skip


def run(
    *,
    layers: int = 4,
    dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float32),
    tokens: Sequence[int] = (1, 16, 256),
    generate: int = 32,
    rounds: int = 7,
    on_step: Callable[[str], None] | None = None,
    grad: bool = False,
    rotary: bool = True,
) -> list[ModelResult]:
    """Time every case; ``grad=True`` runs with autograd on, as a Hugging Face
    user who forgot ``no_grad`` does (the models' weights require grad);
    ``rotary=False`` leaves RoPE (and the q/k norm fusion) stock in the applied model."""
    mode = torch.enable_grad if grad else torch.inference_mode
    # Both compiled variants, both dtypes and every cache state share the code
    # object of the model's forward, hence one Dynamo cache; past its default
    # limit of 8 entries Dynamo would quietly run the rest eagerly.
    with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=512):
        return _run(layers, dtypes, tokens, generate, rounds, on_step, mode, rotary)


def _run(layers, dtypes, tokens, generate, rounds, on_step, mode, rotary) -> list[ModelResult]:
    results = []
    for dtype in dtypes:
        dtype_name = str(dtype).removeprefix("torch.")
        models, failed = _variants(build(layers, dtype), rotary)
        gen = torch.Generator().manual_seed(0)
        with mode():
            for n in tokens:
                if on_step:
                    on_step(f"{dtype_name}: forward {n} tokens")
                ids = torch.randint(3, 1000, (1, n), generator=gen)
                calls = {k: (lambda m=m, ids=ids: m(ids)) for k, m in models.items()}
                results.append(_time(dtype_name, f"forward {n} tokens", calls, failed, rounds, 3))
            if generate:
                if on_step:
                    on_step(f"{dtype_name}: generate {generate}")
                ids = torch.randint(3, 1000, (1, 8), generator=gen)
                calls = {
                    k: (lambda m=m, ids=ids: m.generate(
                        ids, max_new_tokens=generate, min_new_tokens=generate, do_sample=False))
                    for k, m in models.items()
                }  # fmt: skip
                results.append(_time(dtype_name, f"generate {generate}", calls, failed, rounds, 1))
    return results


def plot(results: Sequence[ModelResult], path: str) -> None:
    """Bar chart of the ratio to stock eager per case and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.dtype}\n{r.case}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(results)), 4))
    width = 0.8 / len(VARIANTS)
    for i, name in enumerate(VARIANTS):
        values = [r.ratio_to_stock.get(name, float("nan")) for r in results]
        ax.bar([x + i * width for x in range(len(results))], values, width, label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(results))], labels, fontsize=7)
    ax.set_ylabel("time / stock eager (lower is faster)")
    ax.set_title("Qwen3-0.6B-shaped model, random weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
