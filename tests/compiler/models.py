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


class Block(nn.Module):
    """``norm(linear(x) + residual)`` twice, with and without a linear bias: with
    Inductor, ``mm + residual`` would be folded into ``addmm`` by Inductor's own
    passes if opir's fusion ran after them."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.proj_bias = nn.Linear(hidden, hidden, bias=True)
        self.norm = RMSNorm(hidden, eps=1e-5)
        self.norm_bias = RMSNorm(hidden, eps=1e-6)

    def forward(self, x: torch.Tensor, residual: torch.Tensor):
        h = self.proj(x) + residual
        y = self.norm(h)
        h = self.proj_bias(y) + h
        return self.norm_bias(h), h


class Unfusable(nn.Module):
    """One norm per reason a norm cannot take a residual add."""

    def __init__(self, hidden: int = 16, vocab: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.after_embedding = RMSNorm(hidden)
        self.on_input = RMSNorm(hidden)
        self.after_cast = RMSNorm(hidden)
        self.after_broadcast = RMSNorm(hidden)
        self.after_promotion = RMSNorm(hidden)

    def forward(self, ids: torch.Tensor, x: torch.Tensor, bias: torch.Tensor):
        a = self.after_embedding(self.embed(ids))
        b = self.on_input(x)
        c = self.after_cast((x.half() + a.half()).float())
        d = self.after_broadcast(x + bias)
        e = self.after_promotion(x.half() + b)
        return a, b, c, d, e
