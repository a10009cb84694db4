"""RMSNorm layers over the opir norm ops.

``forward(x, residual=None)`` returns ``out`` or ``(out, residual_out)``. With a
residual the layer calls ``fused_add_rms_norm.maybe_inplace``: **x and residual
are donated** — a kernel may overwrite them with the results, so use only the
returned tensors afterwards (clone first if you still need the inputs).

Weights are ``Parameter(requires_grad=False)``: opir ops have no backward, and
inference callers should not have to wrap every call in ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import nn

from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated


def _weight(values: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(values, requires_grad=False)


class RMSNorm(nn.Module):
    """Llama-style RMSNorm; ``var_hidden_size`` takes the rms over the first columns only."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        var_hidden_size: int | None = None,
        has_weight: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if var_hidden_size is not None and not 1 <= var_hidden_size <= hidden_size:
            raise ValueError(
                f"var_hidden_size must be in [1, {hidden_size}], got {var_hidden_size}"
            )
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.variance_size = None if var_hidden_size in (None, hidden_size) else var_hidden_size
        self.weight = _weight(torch.ones(hidden_size, dtype=dtype)) if has_weight else None

    weight_bias = 0.0
    """Added to the stored weight (in fp32) by the ops; GemmaRMSNorm stores an offset."""

    def effective_weight(self) -> torch.Tensor | None:
        """The weight the norm multiplies by (computed afresh: for inspection only)."""
        if self.weight is None or self.weight_bias == 0.0:
            return self.weight
        return self.weight.float() + self.weight_bias

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        eps, size, bias = self.variance_epsilon, self.variance_size, self.weight_bias
        if residual is None:
            return rms_norm(x, self.weight, eps, size, bias)
        return fused_add_rms_norm.maybe_inplace(x, residual, self.weight, eps, size, bias)

    @property
    def eps(self) -> float:
        """Alias of ``variance_epsilon`` (the name Hugging Face code reads)."""
        return self.variance_epsilon

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.variance_epsilon}"


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the stored weight is an offset; the effective weight is
    ``weight.float() + 1.0`` in fp32 (bf16 ``15.8125 + 1`` would round to 16.75,
    fp32 gives 16.8125). The ops receive the raw parameter and ``weight_bias=1.0``
    and add it per call, so nothing derived from the weight is cached: writes
    through ``weight.data`` (how weight loaders fill parameters) are always seen."""

    weight_bias = 1.0

    def __init__(
        self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(hidden_size, eps, dtype=dtype)
        nn.init.zeros_(self.weight)


class RMSNormGated(nn.Module):
    """Gated RMSNorm (``rms_norm_gated``), per group of ``group_size`` columns."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if group_size is not None and (group_size < 1 or hidden_size % group_size):
            raise ValueError(f"group_size {group_size} must divide hidden_size {hidden_size}")
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.group_size = None if group_size in (None, hidden_size) else group_size
        self.norm_before_gate = norm_before_gate
        self.weight = _weight(torch.ones(hidden_size, dtype=dtype))

    @property
    def eps(self) -> float:
        """Alias of ``variance_epsilon`` (the name Hugging Face code reads)."""
        return self.variance_epsilon

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """``gate=None`` is the plain (grouped) norm."""
        return rms_norm_gated(
            x, gate, self.weight, self.variance_epsilon, self.group_size, self.norm_before_gate
        )

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, eps={self.variance_epsilon}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}"
        )


class Mixer2RMSNormGated(nn.Module):
    """Mamba2's gated norm ("gate then norm") over ``full_n_groups`` groups,
    with the hidden dim split over ``tp_size`` ranks (rank r holds the
    contiguous slice r of the hidden dim and of the weight).

    Which case of DESIGN §6 applies is decided once, here:

    1. one group, ``tp > 1``: all-reduce the fp32 sum of squares, divide by the
       full hidden size, normalise locally;
    2. one group, ``tp == 1``: the gated op over the whole row;
    3. several groups that do not divide over the ranks: all-gather the fp32
       gated values, normalise the full row per group, keep this rank's slice;
    4. several groups, ``n_groups % tp == 0``: the gated op over the local groups.

    ``tp_size``/``tp_rank`` default to the initialised TP group (1/0 without one).
    """

    def __init__(
        self,
        full_hidden_size: int,
        full_n_groups: int,
        use_rms_norm: bool = True,
        eps: float = 1e-6,
        tp_size: int | None = None,
        tp_rank: int | None = None,
    ) -> None:
        super().__init__()
        from opir.distributed import tp_rank as current_rank
        from opir.distributed import tp_world_size

        tp_size = tp_world_size() if tp_size is None else tp_size
        tp_rank = current_rank() if tp_rank is None else tp_rank
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
        if full_n_groups == 1:
            self._case = 1 if tp_size > 1 else 2
        else:
            self._case = 4 if full_n_groups % tp_size == 0 else 3
        self.weight = _weight(torch.ones(self.hidden_size))

    def load_full_weight(self, full_weight: torch.Tensor) -> None:
        """Copy this rank's slice of the full (unsharded) weight into ``self.weight``."""
        from opir.distributed import shard

        if full_weight.shape != (self.full_hidden_size,):
            raise ValueError(
                f"full weight must have shape [{self.full_hidden_size}], "
                f"got {list(full_weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(shard(full_weight, self.tp_rank, self.tp_size))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if not self.use_rms_norm:
            return (x.float() * torch.nn.functional.silu(gate.float())).to(x.dtype)
        if self._case in (2, 4):
            group_size = None if self._case == 2 else self.group_size
            return rms_norm_gated(x, gate, self.weight, self.variance_epsilon, group_size, False)
        from opir.distributed import all_gather, all_reduce

        y = x.float() * torch.nn.functional.silu(gate.float())
        if self._case == 1:
            total = all_reduce(y.pow(2).sum(dim=-1, keepdim=True))
            y = y * torch.rsqrt(total / self.full_hidden_size + self.variance_epsilon)
        else:  # case 3
            full = all_gather(y, -1)
            groups = full.unflatten(-1, (self.full_n_groups, self.group_size))
            normed = groups * torch.rsqrt(
                groups.pow(2).mean(dim=-1, keepdim=True) + self.variance_epsilon
            )
            start = self.tp_rank * self.hidden_size
            y = normed.flatten(-2)[..., start : start + self.hidden_size]
        return (y.to(self.weight.dtype) * self.weight).to(x.dtype)
