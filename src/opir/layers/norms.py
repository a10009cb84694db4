"""RMSNorm layers over the opir norm ops.

``forward(x, residual=None)`` returns ``out`` or ``(out, residual_out)``. With a
residual the layer calls ``fused_add_rms_norm.maybe_inplace``: **x and residual
are donated** — a kernel may overwrite them with the results, so use only the
returned tensors afterwards (clone first if you still need the inputs).

Weights are ``Parameter(requires_grad=False)``: opir ops have no backward, and
inference callers should not have to wrap every call in ``no_grad``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated


def _weight(values: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(values, requires_grad=False)


class RMSNorm(nn.Module):
    """Llama-style RMSNorm; ``variance_size`` takes the rms over the first columns only.

    Names: the constructor takes ``eps`` and the layer stores ``variance_epsilon``
    (with an ``eps`` alias), as Hugging Face's RMSNorm does, so model code reads
    either; everything else uses the ops' names (``variance_size``, ``weight_bias``).
    ``var_hidden_size`` (vLLM's name) still works for one release, with a
    ``DeprecationWarning``.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        variance_size: int | None = None,
        has_weight: bool = True,
        dtype: torch.dtype | None = None,
        *,
        var_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        if var_hidden_size is not None:
            warnings.warn(
                "RMSNorm(var_hidden_size=...) is deprecated: pass variance_size=... "
                "(the ops' name for it)",
                DeprecationWarning,
                stacklevel=2,
            )
            if variance_size is not None:
                raise TypeError(
                    "RMSNorm: pass variance_size only (var_hidden_size is its old name)"
                )
            variance_size = var_hidden_size
        if variance_size is not None and not 1 <= variance_size <= hidden_size:
            raise ValueError(f"variance_size must be in [1, {hidden_size}], got {variance_size}")
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.variance_size = None if variance_size in (None, hidden_size) else variance_size
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
        assert self.weight is not None  # has_weight defaults to True
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
