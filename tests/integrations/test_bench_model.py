"""`opir bench model`: the model's shape, and the table/plot from results (no timing here)."""

from __future__ import annotations

import torch

from opir.bench import model as bench
from opir.cli import build_parser


def test_model_is_qwen3_0_6b_shaped():
    m = bench.build(1, torch.float32)
    c = m.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads) == (1024, 3072, 16)
    assert (c.num_key_value_heads, c.head_dim, c.num_hidden_layers) == (8, 128, 1)


def test_plot_and_cli_arguments(tmp_path):
    results = [
        bench.ModelResult(
            "bfloat16", "forward 1 tokens",
            {bench.STOCK: 1.0, bench.APPLIED: 0.9},
            {bench.STOCK: 1.0, bench.APPLIED: 0.9},
            {bench.OPIR_COMPILE: "RuntimeError: x"},
        )
    ]  # fmt: skip
    out = tmp_path / "model.png"
    bench.plot(results, str(out))
    assert out.stat().st_size > 0
    args = build_parser().parse_args(["bench", "model", "--short", "--layers", "2"])
    assert args.short and args.layers == 2 and not args.no_rotary
    assert build_parser().parse_args(["bench", "model", "--no-rotary"]).no_rotary
