"""Functions that run on every rank (spawned by harness.run_ranks).

Each rank rebuilds the full inputs from fixed seeds, so it can compare its own
TP result with a single-process reference that holds the full weight.
"""

from __future__ import annotations

import itertools
import os
import time

import torch

import opir
from opir.distributed import all_gather, all_reduce, shard
from opir.layers import GemmaRMSNorm, Mixer2RMSNormGated, RMSNorm, fused_all_reduce_rms_norm
from opir.ops import (
    all_reduce_rms_norm,
    all_reduce_rms_norm_quant,
    rms_norm,
    rms_norm_gated,
    static_quant,
)

HIDDEN = 96  # divisible by 1, 2, 3, 4 and 8


def _seeded(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1) -> bool:
    tol = rms_norm.tolerance(dtype)
    return bool(
        torch.allclose(got.float(), expected.float(), atol=scale * tol.atol, rtol=scale * tol.rtol)
    )


def mixer2_cases(rank: int, world: int, groups_list, dtypes) -> dict:
    out = {}
    for groups in groups_list:
        for dtype in dtypes:
            x, gate = _seeded(1, 5, HIDDEN, dtype=dtype), _seeded(2, 5, HIDDEN, dtype=dtype)
            weight = (1 + 0.1 * _seeded(3, HIDDEN)).to(dtype)
            reference = rms_norm_gated.native(x, gate, weight, 1e-6, HIDDEN // groups, False)
            layer = Mixer2RMSNormGated(HIDDEN, groups, eps=1e-6).to(dtype)
            layer.load_full_weight(weight)
            got = layer(shard(x), shard(gate))
            expected = shard(reference)
            out[(groups, str(dtype))] = (
                int(layer.tp_case),
                _max_diff(got, expected),
                _close(got, expected, dtype),
            )
        # gate=None: the plain grouped norm, as the op defines it
        x = _seeded(4, 3, HIDDEN)
        layer = Mixer2RMSNormGated(HIDDEN, groups, eps=1e-6)
        layer.load_full_weight(1 + 0.1 * _seeded(5, HIDDEN))
        reference = rms_norm_gated.native(
            x, None, 1 + 0.1 * _seeded(5, HIDDEN), 1e-6, HIDDEN // groups
        )
        got, expected = layer(shard(x)), shard(reference)
        out[(groups, "no gate")] = (
            int(layer.tp_case),
            _max_diff(got, expected),
            _close(got, expected, torch.float32),
        )
    return out


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def fused_norm_cases(rank: int, world: int) -> dict:
    """Fused op and helper vs the unfused TP path (bf16 and fp32), and the unfused
    path vs a single-process reference in fp32 (in bf16 gloo sums the partials
    in bf16, in an order of its own, so only fp32 compares across reductions)."""
    out = {}
    for cls, with_residual, dtype in itertools.product(
        (RMSNorm, GemmaRMSNorm), (False, True), (torch.float32, torch.bfloat16)
    ):
        norm = cls(HIDDEN).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(0.5 * _seeded(7, HIDDEN, dtype=dtype))
        partials = [_seeded(100 + r, 4, HIDDEN, dtype=dtype) for r in range(world)]
        residual = _seeded(9, 4, HIDDEN, dtype=dtype) if with_residual else None

        def fresh_residual(residual=residual):
            return None if residual is None else residual.clone()

        mine = partials[rank]
        unfused = norm(all_reduce(mine), fresh_residual())  # the unfused path on this rank
        helper = fused_all_reduce_rms_norm(mine.clone(), fresh_residual(), norm)
        bias = 1.0 if cls is GemmaRMSNorm else 0.0
        op_out = all_reduce_rms_norm(mine, residual, norm.weight, 1e-6, None, bias)
        total = torch.stack([p.float() for p in partials]).sum(0).to(dtype)
        reference = norm(total, fresh_residual())  # single process, full sum
        single = dtype != torch.float32 or _close(_first(unfused), _first(reference), dtype)
        out[(cls.__name__, with_residual, str(dtype))] = {
            "helper_vs_unfused": _close(_first(helper), _first(unfused), dtype, 2),
            "op_vs_unfused": _close(op_out[0], _first(unfused), dtype, 2),
            "unfused_vs_single_process_fp32": single,
            "residual_out": (not with_residual)
            or bool(torch.equal(op_out[1], unfused[1]) and torch.equal(helper[1], unfused[1])),
        }
    return out


def quant_cases(rank: int, world: int) -> dict:
    """all_reduce_rms_norm_quant on this rank: native bit for bit the unfused sequence
    (all_reduce_rms_norm, then static_quant) and the dispatched op within its tolerance;
    bad input raises on every rank before the all-reduce (nobody waits)."""
    out: dict = {}
    w = 0.5 * _seeded(7, HIDDEN)
    for dtype, qdtype, with_residual, bias in itertools.product(
        (torch.float32, torch.bfloat16),
        (torch.int8, torch.float8_e4m3fn),
        (False, True),
        (0.0, 1.0),
    ):
        mine = _seeded(100 + rank, 4, HIDDEN, dtype=dtype)
        residual = _seeded(9, 4, HIDDEN, dtype=dtype) if with_residual else None
        scale = torch.tensor([6.0 / (127.0 if qdtype == torch.int8 else 448.0)])
        wd = w.to(dtype)
        normed, res = all_reduce_rms_norm(mine, residual, wd, 1e-6, None, bias)
        want = static_quant.native(normed, scale, qdtype)
        native = all_reduce_rms_norm_quant.native(
            mine, residual, wd, 1e-6, scale, qdtype, None, bias
        )
        got = all_reduce_rms_norm_quant(mine, residual, wd, 1e-6, scale, qdtype, None, bias)
        tol = all_reduce_rms_norm_quant.tolerance(qdtype) if qdtype != torch.int8 else None
        diff = (got[0].float() - want.float()).abs()
        close = bool(
            (diff <= (1.0 if tol is None else tol.atol + tol.rtol * want.float().abs())).all()
        )
        out[(str(dtype), str(qdtype), with_residual, bias)] = {
            "native_bits": bool(
                torch.equal(native[0].view(torch.uint8), want.view(torch.uint8))
                and torch.equal(native[1], res)
            ),
            "op_close": close and bool(torch.equal(got[1], res)),
        }
    try:
        all_reduce_rms_norm_quant(mine, None, wd, 1e-6, scale, torch.float16)
        out["bad_dtype"] = "no error"
    except ValueError as error:
        out["bad_dtype"] = str(error)
    out["after_error"] = all_reduce(torch.ones(2)).tolist()  # the group still works
    return out


class TPBlock(torch.nn.Module):
    """Row-parallel outputs followed by norms in every form the TP fusion handles."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = RMSNorm(HIDDEN).to(torch.bfloat16)
        self.gemma = GemmaRMSNorm(HIDDEN).to(torch.bfloat16)
        self.lin = torch.nn.Linear(HIDDEN, HIDDEN, bias=False, dtype=torch.bfloat16)
        self.fp32_weight = torch.nn.Parameter(torch.rand(HIDDEN) + 0.5, requires_grad=False)
        with torch.no_grad():
            self.lin.weight.copy_(0.1 * _seeded(11, HIDDEN, HIDDEN))
            self.gemma.weight.copy_(0.1 * _seeded(12, HIDDEN))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = all_reduce(self.lin(x))
        y, residual = self.norm(h, residual)  # all_reduce -> fused_add_rms_norm
        y = self.gemma(all_reduce(self.lin(y)) + residual)  # all_reduce -> add -> Gemma norm
        blocked = rms_norm(all_reduce(y), self.fp32_weight, 1e-6)  # bf16 x, fp32 w: guard
        return blocked + residual


def compile_pass(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = TPBlock().eval()
    x, residual = (
        _seeded(20 + rank, 3, HIDDEN, dtype=torch.bfloat16),
        _seeded(30, 3, HIDDEN, dtype=torch.bfloat16),
    )
    with torch.no_grad():
        eager = model(x.clone(), residual.clone())
        compiled = opir.compile(model, options={"inductor": False})
        got = compiled(x.clone(), residual.clone())
    report = compiled.opir_report.last
    fused = [e for e in report.lowered if e.op == "all_reduce_rms_norm"]
    return {
        "fusions": report.fusions,
        "weight_biases": sorted(e.constants[2] for e in fused),  # (epsilon, variance_size, bias)
        "ops": sorted(e.op for e in report.lowered),
        "close": _close(got, eager, torch.bfloat16, 4),
        "max_diff": _max_diff(got, eager),
    }


def everything(rank: int, world: int, groups_list, dtypes) -> dict:
    return {
        "mixer2": mixer2_cases(rank, world, groups_list, dtypes),
        "fused": fused_norm_cases(rank, world),
        "quant": quant_cases(rank, world),
        "compile": compile_pass(rank, world),
        "mismatch": _tp_error(all_reduce, torch.ones(3 + rank)),
        "int8_vs_uint8": _tp_error(
            all_reduce, torch.ones(4, dtype=(torch.int8, torch.uint8)[rank % 2])
        ),
        "beyond_8_dims": _tp_error(
            all_reduce, torch.ones([1] * 8 + ([2, 3] if rank % 2 else [3, 2]))
        ),
        "gather_beyond_8_dims": _tp_error(
            lambda t: all_gather(t, 0), torch.ones([1] * 8 + ([2, 3] if rank % 2 else [3, 2]))
        ),
        "same_9_dims_sum": all_reduce(torch.ones([1] * 8 + [2])).flatten().tolist(),
        "wrong_tp_size": _tp_error(
            lambda _: Mixer2RMSNormGated(HIDDEN, 1, tp_size=2 * world), None
        ),
    }


def _tp_error(fn, arg) -> str:
    try:
        fn(arg)
    except opir.distributed.TPError as e:
        return str(e)
    return "no error"


def _group_formed() -> None:
    """Every rank has joined: one collective all ranks complete before any of them
    fails on purpose. Without it, on a loaded machine a rank could fail before its
    peer finished joining, and the peer would (correctly) report "could not join
    the TP group" instead of the failure under test."""
    all_reduce(torch.ones(1))


def _survivor(rank: int) -> tuple[str, float]:
    """Rank 0's side: the collective a failed peer abandons, its error, the seconds
    it waited (measured here, free of process start-up time)."""
    start = time.monotonic()
    try:
        all_reduce(torch.ones(4))
    except opir.distributed.TPError as e:
        return str(e), time.monotonic() - start
    return "no error", time.monotonic() - start


def raises_before_all_reduce(rank: int, world: int) -> tuple[str, float]:
    """Rank 1 raises (the process lives on and tears down); rank 0 waits in a collective."""
    _group_formed()
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    return _survivor(rank)


def dies_before_all_reduce(rank: int, world: int) -> tuple[str, float]:
    """Rank 1 dies (os._exit) once the group is formed; rank 0 waits in a collective."""
    _group_formed()
    if rank == 1:
        os._exit(3)
    return _survivor(rank)


def never_joined(rank: int, world: int) -> str:
    """Run by a lone rank of a group of two: init_tp itself must fail, so never here."""
    return "joined a group whose peer was never started"
