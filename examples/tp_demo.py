"""A small tensor-parallel model under torchrun, checked against one process.

    torchrun --standalone --nproc-per-node 2 examples/tp_demo.py

Every rank builds the same full inputs and weights from fixed seeds, runs its
shard through opir's TP layers, and compares its slice with what a single
process holding the full weights computes.
"""

from __future__ import annotations

import os
import sys

import torch

import opir
from opir.distributed import all_reduce, init_tp, shard
from opir.layers import GemmaRMSNorm, Mixer2RMSNormGated, fused_all_reduce_rms_norm

HIDDEN, TOKENS = 96, 8


def seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def main() -> None:
    init_tp()  # rank and world size from torchrun's environment
    rank, world = opir.distributed.tp_rank(), opir.distributed.tp_world_size()
    rows = []
    with torch.inference_mode():
        x, gate, weight = (
            seeded(1, TOKENS, HIDDEN),
            seeded(2, TOKENS, HIDDEN),
            1 + 0.1 * seeded(3, HIDDEN),
        )
        for groups in (1, 3, 4):
            layer = Mixer2RMSNormGated(HIDDEN, groups)
            layer.load_full_weight(weight)
            mine = layer(shard(x), shard(gate))
            single = Mixer2RMSNormGated(HIDDEN, groups, tp_size=1, tp_rank=0)
            single.load_full_weight(weight)
            expected = shard(single(x, gate))
            rows.append(
                (
                    f"Mixer2RMSNormGated, {groups} group(s), case {layer.tp_case.name}",
                    mine,
                    expected,
                )
            )

        norm = GemmaRMSNorm(HIDDEN)
        norm.weight.copy_(0.1 * seeded(4, HIDDEN))
        partials = [seeded(10 + r, TOKENS, HIDDEN) for r in range(world)]
        residual = seeded(5, TOKENS, HIDDEN)
        out, _ = fused_all_reduce_rms_norm(partials[rank], residual.clone(), norm)
        expected, _ = norm(torch.stack(partials).sum(0), residual.clone())
        rows.append(("all-reduce + residual + GemmaRMSNorm (fused op)", out, expected))
        unfused, _ = norm(all_reduce(partials[rank]), residual.clone())
        rows.append(("  same, unfused all_reduce then norm", unfused, expected))

    lines, failures = [], 0
    for name, got, expected in rows:
        diff = (got - expected).abs().max().item()
        ok = torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        failures += not ok
        lines.append(
            f"rank {rank}/{world}: {name:<50} max |diff| {diff:.1e}  {'OK' if ok else 'MISMATCH'}"
        )
    every_rank = [None] * world
    torch.distributed.all_gather_object(every_rank, (lines, failures))
    if rank == 0:  # one reader-friendly report, in rank order
        print("per-rank agreement with a single process holding the full weights:")
        print("\n".join(line for rank_lines, _ in every_rank for line in rank_lines))
    opir.distributed.destroy_tp()
    # Skip interpreter finalization: under load, gloo's worker threads can
    # still be releasing tensors then and abort the process (SIGABRT,
    # "terminate called without an active exception"; pytorch/pytorch#179291).
    sys.stdout.flush()
    os._exit(1 if any(f for _, f in every_rank) else 0)


if __name__ == "__main__":
    main()
