"""Small decoder-like models shared by the compile tests and checks."""

from __future__ import annotations

import torch
from torch import nn

from opir.layers import GemmaRMSNorm, RMSNorm


class Decoder(nn.Module):
    """Four norms with residuals: HF-style add-then-norm (fusable), donating
    ``maybe_inplace`` calls through the layers, a default-overload call, and a
    Gemma norm."""

    def __init__(self, hidden: int = 64, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.norm_in = RMSNorm(hidden, eps=1e-5, dtype=dtype)
        self.norm_mid = RMSNorm(hidden, eps=1e-6, dtype=dtype)
        self.norm_gemma = GemmaRMSNorm(hidden).to(dtype)
        self.norm_out = RMSNorm(hidden, eps=1e-6, dtype=dtype)
        self.proj = nn.Linear(hidden, hidden, dtype=dtype)
        self.mlp = nn.Linear(hidden, hidden, dtype=dtype)
        with torch.no_grad():
            for norm in (self.norm_in, self.norm_mid, self.norm_out):
                norm.weight.uniform_(0.5, 1.5)
            self.norm_gemma.weight.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = x + residual  # HF style: the add+norm fusion should fire here
        y = self.norm_in(h)
        y = self.proj(y)
        y, h = self.norm_mid(y, h)  # maybe_inplace: y and h are donated
        y = self.mlp(y)
        y, h = self.norm_gemma(y, h)  # Gemma, donating
        return self.norm_out(y + h)  # another add+norm: fusable
