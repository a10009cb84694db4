"""A decoder stack written twice: with opir layers, and in plain PyTorch.

Both compute the same thing with the same weights (the numerics of
``opir.ops.norms``), so
``opir.compile`` can be compared with ``torch.compile`` of code that never
heard of opir. Attention is stood in for by a linear layer. The MLP is
Llama's SwiGLU, ``down(silu(gate(x)) * up(x))``: the opir model calls
``opir.ops.silu_mul`` on the two projections, the plain model writes
``F.silu(gate) * up``, which ``opir.compile``'s fusion rule would turn into the
same op. The norms, residual adds and the gated activation are what differ.
"""

from __future__ import annotations

import torch
from torch import nn

from opir.layers import RMSNorm
from opir.ops import silu_mul


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:  # RMSNorm(has_weight=False)
        return y.to(x.dtype)
    return (y.to(weight.dtype) * weight).to(x.dtype)


class _Layer(nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype, opir_norms: bool) -> None:
        super().__init__()
        self.opir_norms = opir_norms
        self.input_norm = RMSNorm(hidden, dtype=dtype)
        self.post_norm = RMSNorm(hidden, dtype=dtype)
        self.attn = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
        inter = 2 * hidden
        self.gate = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.up = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.down = nn.Linear(inter, hidden, bias=False, dtype=dtype)

    def _norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        if self.opir_norms:
            return norm(x)
        return torch_rms_norm(x, norm.weight, norm.variance_epsilon)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor):
        residual = hidden + residual  # Hugging Face style: add, then norm
        h = self.attn(self._norm(self.input_norm, residual))
        residual = h + residual
        h = self._norm(self.post_norm, residual)
        return self.down(self._swiglu(self.gate(h), self.up(h))), residual

    def _swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.opir_norms:
            return silu_mul(gate, up)
        return torch.nn.functional.silu(gate) * up


class Decoder(nn.Module):
    def __init__(
        self, hidden: int = 1024, layers: int = 4, dtype=torch.bfloat16, opir_norms: bool = True
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(hidden, dtype, opir_norms) for _ in range(layers))
        self.final_norm = RMSNorm(hidden, dtype=dtype)
        self.opir_norms = opir_norms

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = torch.zeros_like(hidden)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        hidden = hidden + residual
        if self.opir_norms:
            return self.final_norm(hidden)
        return torch_rms_norm(hidden, self.final_norm.weight, self.final_norm.variance_epsilon)


def twin_models(hidden: int, layers: int, dtype: torch.dtype, seed: int = 0):
    """(opir model, plain-PyTorch model) with identical weights."""
    torch.manual_seed(seed)
    with_opir = Decoder(hidden, layers, dtype, opir_norms=True).eval()
    with torch.no_grad():
        for module in with_opir.modules():
            if isinstance(module, RMSNorm) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
    plain = Decoder(hidden, layers, dtype, opir_norms=False).eval()
    plain.load_state_dict(with_opir.state_dict())
    return with_opir, plain
