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

    def effective_weight(self) -> torch.Tensor | None:
        return self.weight

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        weight = self.effective_weight()
        if residual is None:
            return rms_norm(x, weight, self.variance_epsilon, self.variance_size)
        return fused_add_rms_norm.maybe_inplace(
            x, residual, weight, self.variance_epsilon, self.variance_size
        )

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.variance_epsilon}"


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the stored weight is an offset; the effective weight is
    ``weight.float() + 1.0`` in fp32 (bf16 ``15.8125 + 1`` would round to 16.75,
    fp32 gives 16.8125), passed as an fp32 weight to the ops (mixed dtype)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, eps)
        nn.init.zeros_(self.weight)
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    def effective_weight(self) -> torch.Tensor:
        if torch.compiler.is_compiling():  # keep `w.float() + 1.0` visible to graph passes
            return self.weight.float() + 1.0
        w = self.weight
        key = (w.data_ptr(), w._version)  # in-place updates (load_state_dict) bump _version
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, w.float() + 1.0)
        return self._cached[1]


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
        self.eps = eps
        self.group_size = None if group_size in (None, hidden_size) else group_size
        self.norm_before_gate = norm_before_gate
        self.weight = _weight(torch.ones(hidden_size, dtype=dtype))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return rms_norm_gated(
            x, gate, self.weight, self.eps, self.group_size, self.norm_before_gate
        )


class Mixer2RMSNormGated(nn.Module):
    """Mamba2's gated norm ("gate then norm") over ``full_n_groups`` groups.

    The hidden dim may be split over tensor-parallel ranks; which of DESIGN §6's
    cases applies is decided once, here. Single-device cases:

    * case 2 (one group): the gated op over the whole row;
    * case 4 (several groups): the gated op with ``group_size = H / n_groups``.

    The tensor-parallel cases (1: all-reduce the sum of squares; 3: all-gather
    when groups do not divide the ranks) need ``opir.distributed`` and arrive
    with it; ``_case`` is where they slot in.
    """

    def __init__(
        self,
        full_hidden_size: int,
        full_n_groups: int,
        use_rms_norm: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if full_n_groups < 1 or full_hidden_size % full_n_groups:
            raise ValueError(
                f"full_n_groups ({full_n_groups}) must divide full_hidden_size ({full_hidden_size})"
            )
        self.full_hidden_size = full_hidden_size
        self.full_n_groups = full_n_groups
        self.use_rms_norm = use_rms_norm
        self.variance_epsilon = eps
        self.tp_size, self.tp_rank = 1, 0
        self.hidden_size = full_hidden_size // self.tp_size
        self.group_size = full_hidden_size // full_n_groups
        self._case = 2 if full_n_groups == 1 else 4
        self.weight = _weight(torch.ones(self.hidden_size))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if not self.use_rms_norm:
            return (x.float() * torch.nn.functional.silu(gate.float())).to(x.dtype)
        group_size = None if self._case == 2 else self.group_size
        return rms_norm_gated(x, gate, self.weight, self.variance_epsilon, group_size, False)
