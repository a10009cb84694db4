"""Tensor-parallel layer code: Mamba2's sharded gated norm and the eager
all-reduce + RMSNorm helper.

Layers depend on ``opir.distributed`` (collectives, rank, sharding); the
distributed package never imports a layer, so the dependency goes one way.
"""

from __future__ import annotations

import enum
import warnings

import torch
from torch import nn

from opir.distributed import TPError, all_gather, all_reduce, shard, tp_world_size
from opir.distributed import tp_rank as current_tp_rank
from opir.layers.norms import RMSNorm
from opir.ops import all_reduce_rms_norm, rms_norm_gated


class TPNormCase(enum.IntEnum):
    """How a gated group norm runs when its hidden dim is split over TP ranks
    (the values number the four cases below)."""

    ALL_REDUCE_SUM_OF_SQUARES = 1
    """One group, tp > 1: all-reduce the fp32 sum of squares, normalise locally."""
    LOCAL_WHOLE_ROW = 2
    """One group, tp == 1: the gated op over the whole row."""
    ALL_GATHER_GROUPS = 3
    """Groups that do not divide over the ranks: all-gather the gated values,
    normalise the full row per group, keep this rank's slice."""
    LOCAL_GROUPS = 4
    """``n_groups % tp == 0``: every group lives on one rank; the gated op locally."""

    # An IntEnum prints as its number ("4") since Python 3.11; print the name instead.
    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @classmethod
    def choose(cls, n_groups: int, tp_size: int) -> TPNormCase:
        if n_groups == 1:
            return cls.ALL_REDUCE_SUM_OF_SQUARES if tp_size > 1 else cls.LOCAL_WHOLE_ROW
        return cls.LOCAL_GROUPS if n_groups % tp_size == 0 else cls.ALL_GATHER_GROUPS


class Mixer2RMSNormGated(nn.Module):
    """Mamba2's gated norm ("gate then norm") over ``full_n_groups`` groups,
    with the hidden dim split over ``tp_size`` ranks (rank r holds the
    contiguous slice r of the hidden dim and of the weight).

    ``tp_size``/``tp_rank`` default to the initialised TP group (1/0 without
    one). ``tp_size > 1`` needs a TP group of that size (``opir.distributed.init_tp``)
    unless the layer only runs a case without collectives; the check is made
    at construction. Which :class:`TPNormCase` applies is decided once, here
    (``self.tp_case``). ``forward(x, gate=None)``: without a gate it is the
    plain grouped RMSNorm, as for the ``rms_norm_gated`` op.
    """

    def __init__(
        self,
        full_hidden_size: int,
        full_n_groups: int,
        use_rms_norm: bool = True,
        eps: float = 1e-6,
        tp_size: int | None = None,
        tp_rank: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        tp_size, tp_rank = _tp_layout(tp_size, tp_rank)
        if full_n_groups < 1 or full_hidden_size % full_n_groups:
            raise ValueError(
                f"full_n_groups ({full_n_groups}) must divide full_hidden_size ({full_hidden_size})"
            )
        if full_hidden_size % tp_size:
            raise ValueError(
                f"full_hidden_size ({full_hidden_size}) is not divisible by the tensor-parallel "
                f"world size ({tp_size}); choose a hidden size that is a multiple of it"
            )
        self.full_hidden_size = full_hidden_size
        self.full_n_groups = full_n_groups
        self.use_rms_norm = use_rms_norm
        self.variance_epsilon = eps
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.hidden_size = full_hidden_size // tp_size
        self.group_size = full_hidden_size // full_n_groups
        self.tp_case = TPNormCase.choose(full_n_groups, tp_size)
        needs_group = use_rms_norm and self.tp_case in (
            TPNormCase.ALL_REDUCE_SUM_OF_SQUARES,
            TPNormCase.ALL_GATHER_GROUPS,
        )
        if needs_group and tp_world_size() != tp_size:
            raise TPError(
                f"Mixer2RMSNormGated(tp_size={tp_size}) needs a TP group of {tp_size} ranks for "
                f"its collectives, but the current TP world size is {tp_world_size()}. Call "
                f"opir.distributed.init_tp() on every rank before building the layer."
            )
        self.weight = nn.Parameter(torch.ones(self.hidden_size, dtype=dtype), requires_grad=False)

    def load_full_weight(self, full_weight: torch.Tensor) -> None:
        """Copy this rank's slice of the full (unsharded) weight into ``self.weight``."""
        if full_weight.shape != (self.full_hidden_size,):
            raise ValueError(
                f"full weight must have shape [{self.full_hidden_size}], "
                f"got {list(full_weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(shard(full_weight, self.tp_rank, self.tp_size))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if not self.use_rms_norm:
            if gate is None:
                return x
            return (x.float() * torch.nn.functional.silu(gate.float())).to(x.dtype)
        case, eps = self.tp_case, self.variance_epsilon
        if case is TPNormCase.LOCAL_WHOLE_ROW:
            return rms_norm_gated(x, gate, self.weight, eps, None, False)
        if case is TPNormCase.LOCAL_GROUPS:
            return rms_norm_gated(x, gate, self.weight, eps, self.group_size, False)
        y = x.float() if gate is None else x.float() * torch.nn.functional.silu(gate.float())
        if case is TPNormCase.ALL_REDUCE_SUM_OF_SQUARES:
            total = all_reduce(y.pow(2).sum(dim=-1, keepdim=True))
            y = y * torch.rsqrt(total / self.full_hidden_size + eps)
        else:  # ALL_GATHER_GROUPS
            full = all_gather(y, -1)
            groups = full.unflatten(-1, (self.full_n_groups, self.group_size))
            normed = groups * torch.rsqrt(groups.pow(2).mean(dim=-1, keepdim=True) + eps)
            start = self.tp_rank * self.hidden_size
            y = normed.flatten(-2)[..., start : start + self.hidden_size]
        return (y.to(self.weight.dtype) * self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.full_hidden_size}, groups={self.full_n_groups}, eps={self.variance_epsilon}, "
            f"tp={self.tp_rank}/{self.tp_size}, case={self.tp_case.name}"
        )


def _tp_layout(tp_size: int | None, tp_rank: int | None) -> tuple[int, int]:
    """Validated (tp_size, tp_rank), defaulting to the current TP group."""
    tp_size = tp_world_size() if tp_size is None else tp_size
    tp_rank = current_tp_rank() if tp_rank is None else tp_rank
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive int (the TP world size), got {tp_size!r}")
    if not isinstance(tp_rank, int) or not 0 <= tp_rank < tp_size:
        raise ValueError(
            f"tp_rank must be an int in [0, {tp_size}) for tp_size={tp_size}, got {tp_rank!r}"
        )
    return tp_size, tp_rank


def fused_all_reduce_rms_norm(
    hidden_states: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``norm(all_reduce(hidden_states), residual)`` for RMSNorm / GemmaRMSNorm.

    At world size 1 this is the norm itself. Otherwise it calls the
    ``all_reduce_rms_norm`` op (with the raw weight and ``weight_bias=1.0``
    for Gemma), whose priority picks a fused kernel where one fits and the
    unfused native sequence otherwise. Returns what the norm returns: ``out``,
    or ``(out, residual_out)`` when a residual is given.

    Example::

        out, residual = fused_all_reduce_rms_norm(row_parallel_out, residual, layer.norm)
    """
    if not isinstance(norm, RMSNorm):
        raise TypeError(
            f"fused_all_reduce_rms_norm needs an opir RMSNorm/GemmaRMSNorm, got {type(norm)}"
        )
    if tp_world_size() == 1:
        return norm(hidden_states) if residual is None else norm(hidden_states, residual)
    out, residual_out = all_reduce_rms_norm(
        hidden_states,
        residual,
        norm.weight,
        norm.variance_epsilon,
        norm.variance_size,
        norm.weight_bias,
    )
    return out if residual is None else (out, residual_out)


def __getattr__(name: str) -> object:
    """``fused_allreduce_rms_norm``: the old spelling, for one release."""
    if name == "fused_allreduce_rms_norm":
        warnings.warn(
            "opir.layers.fused_allreduce_rms_norm is deprecated: it is now "
            "fused_all_reduce_rms_norm (all_reduce spelled as in the op all_reduce_rms_norm)",
            DeprecationWarning,
            stacklevel=2,
        )
        return fused_all_reduce_rms_norm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
