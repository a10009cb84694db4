"""A decoder stack written twice: with opir layers, and in plain PyTorch.

Both compute the same thing with the same weights (the numerics of
``opir.ops.norms`` and ``opir.ops.rotary``), so
``opir.compile`` can be compared with ``torch.compile`` of code that never
heard of opir. Attention is Qwen3's: q/k/v projections (GQA, head_dim 128),
per-head RMSNorm of q and k on ``[batch, seq, heads, head_dim]``, ``transpose(1,
2)``, rotary embedding with the ``cos``/``sin`` computed once per forward as
Hugging Face's rotary module does, torch's SDPA (causal) and the output
projection. The opir model norms q and k with opir layers and rotates with
``opir.ops.rotary_pos_emb`` (what ``opir.integrations`` leaves in a model),
which ``opir.compile``'s ``qk_norm_rotary_pos_emb`` rule fuses; the plain model
writes transformers' ``q * cos + rotate_half(q) * sin``. The MLP is
Llama's SwiGLU, ``down(silu(gate(x)) * up(x))``: the opir model calls
``opir.ops.silu_mul`` on the two projections, the plain model writes
``F.silu(gate) * up``, which ``opir.compile``'s fusion rule would turn into the
same op. The norms, residual adds and the gated activation are what differ.
"""

from __future__ import annotations

import torch
from torch import nn

from opir.layers import RMSNorm
from opir.ops import rotary_pos_emb, silu_mul

HEAD_DIM = 128


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:  # RMSNorm(has_weight=False)
        return y.to(x.dtype)
    return (y.to(weight.dtype) * weight).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def torch_rope(q, k, cos, sin):
    """transformers' ``apply_rotary_pos_emb`` (unsqueeze_dim=1)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class _Attention(nn.Module):
    """Qwen3 attention on 2-D tokens (one sequence): norms per head, RoPE, SDPA."""

    def __init__(self, hidden: int, dtype: torch.dtype, opir_norms: bool) -> None:
        super().__init__()
        self.opir_norms = opir_norms
        self.heads = max(1, hidden // HEAD_DIM)
        self.kv_heads = max(1, self.heads // 2)
        d = HEAD_DIM
        self.q_proj = nn.Linear(hidden, self.heads * d, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(hidden, self.kv_heads * d, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(hidden, self.kv_heads * d, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(self.heads * d, hidden, bias=False, dtype=dtype)
        self.q_norm = RMSNorm(d, dtype=dtype)
        self.k_norm = RMSNorm(d, dtype=dtype)

    def _norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        if self.opir_norms:
            return norm(x)
        return torch_rms_norm(x, norm.weight, norm.variance_epsilon)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        shape = (1, tokens, -1, HEAD_DIM)  # [batch, seq, heads, head_dim]
        q = self._norm(self.q_norm, self.q_proj(x).view(shape)).transpose(1, 2)
        k = self._norm(self.k_norm, self.k_proj(x).view(shape)).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if self.opir_norms:
            q, k = rotary_pos_emb(q, k, cos, sin)
        else:
            q, k = torch_rope(q, k, cos, sin)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True
        )
        return self.o_proj(o.transpose(1, 2).reshape(tokens, -1))


class _Layer(nn.Module):
    def __init__(self, hidden: int, dtype: torch.dtype, opir_norms: bool) -> None:
        super().__init__()
        self.opir_norms = opir_norms
        self.input_norm = RMSNorm(hidden, dtype=dtype)
        self.post_norm = RMSNorm(hidden, dtype=dtype)
        self.attn = _Attention(hidden, dtype, opir_norms)
        inter = 2 * hidden
        self.gate = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.up = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.down = nn.Linear(inter, hidden, bias=False, dtype=dtype)

    def _norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        if self.opir_norms:
            return norm(x)
        return torch_rms_norm(x, norm.weight, norm.variance_epsilon)

    def forward(self, hidden, residual, cos, sin):
        residual = hidden + residual  # Hugging Face style: add, then norm
        h = self.attn(self._norm(self.input_norm, residual), cos, sin)
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
        exponents = torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", 1.0 / (1e6**exponents), persistent=False)

    def rotary(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, tokens, head_dim] in the model dtype (Hugging Face's rotary module)."""
        positions = torch.arange(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)[None]
        return emb.cos().to(hidden.dtype), emb.sin().to(hidden.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = torch.zeros_like(hidden)
        cos, sin = self.rotary(hidden)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin)
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
