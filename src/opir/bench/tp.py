"""``opir bench tp``: collectives and the all-reduce + norm op on 2 local gloo ranks.

Both ranks run the same interleaved schedule (fixed calls per round, so their
collectives stay in step); rank 0 reports. Candidates: ``all_reduce`` with and
without the cross-rank shape check, the unfused ``RMSNorm(all_reduce(x), r)``
and the ``all_reduce_rms_norm`` op, on a bf16 [tokens, hidden] activation.
"""

from __future__ import annotations

import torch

CANDIDATES = (
    "all_reduce, shape check on",
    "all_reduce, shape check off",
    "RMSNorm(all_reduce(x), residual), unfused",
    "all_reduce_rms_norm op",
)


def _on_rank(rank: int, world: int, tokens: int, hidden: int, rounds: int) -> dict[str, float]:
    from opir.bench.timing import interleave
    from opir.distributed import all_reduce, group
    from opir.layers import RMSNorm
    from opir.ops import all_reduce_rms_norm

    x = torch.randn(tokens, hidden).bfloat16()
    residual = torch.randn(tokens, hidden).bfloat16()
    norm = RMSNorm(hidden, dtype=torch.bfloat16)

    def checked():
        group._state["check_shapes"] = True
        return all_reduce(x)

    def unchecked():
        group._state["check_shapes"] = False
        return all_reduce(x)

    def unfused():
        group._state["check_shapes"] = True
        return norm(all_reduce(x), residual.clone())

    def fused():
        group._state["check_shapes"] = True
        return all_reduce_rms_norm(x, residual, norm.weight, 1e-6, None, 0.0)

    with torch.inference_mode():
        fns = dict(zip(CANDIDATES, (checked, unchecked, unfused, fused), strict=True))
        samples = interleave(fns, rounds=rounds, number=20, warmup=5)
    group._state["check_shapes"] = True
    return {name: samples.median(name) * 1e6 for name in CANDIDATES}


def run(tokens: int = 16, hidden: int = 1024, rounds: int = 15, world: int = 2) -> dict[str, float]:
    """Median µs per call on rank 0 (raises if any rank failed)."""
    from opir.distributed.launch import run_on_ranks

    results = run_on_ranks(world, _on_rank, tokens, hidden, rounds)
    failed = {rank: text for rank, (status, text) in results.items() if status != "ok"}
    if failed:
        raise RuntimeError(f"opir bench tp: ranks failed: {failed}")
    return results[0][1]
