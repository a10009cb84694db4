"""RoPE fusion: Hugging Face's expression -> rotary_pos_emb, per-head q/k norms + RoPE ->
qk_norm_rotary_pos_emb / qk_norm_rope (bit-identical), and why they do not fire."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_rope
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb as qwen3_rope

import opir
from opir.compiler.fusion import fuse
from opir.compiler.fusion_rules import RULES
from opir.compiler.fx_utils import opir_nodes
from opir.ops import rotary

B, S, HQ, HK, D = 1, 5, 4, 2, 8
EPS = 1e-6


def _fused(fn, *args, decompose=False):
    """(fired rules, opir ops left, unfused (op, reason)s, graph module) after fusing."""
    from torch._inductor.decomposition import select_decomp_table

    table = select_decomp_table() if decompose else None
    gm = make_fx(fn, decomposition_table=table, tracing_mode="fake")(*args)
    result = fuse(gm.graph, RULES)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    left = [op.name for _, op, _ in opir_nodes(gm.graph)]
    return result.fired, left, [(u.op, u.reason) for u in result.unfused], gm


def _inputs(dtype=torch.bfloat16, rd=D, cos_dtype=None):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, S, HQ, D, generator=g).to(dtype)  # as the projections give them
    k = torch.randn(B, S, HK, D, generator=g).to(dtype)
    cos = torch.randn(B, S, rd, generator=g).to(cos_dtype or dtype)
    sin = torch.randn(B, S, rd, generator=g).to(cos_dtype or dtype)
    qw = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype)
    kw = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype)
    return q, k, cos, sin, qw, kw


def _rope(q, k, cos, sin, qw, kw):  # Llama: no q/k norms
    return qwen3_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def _partial(q, k, cos, sin, qw, kw):  # Phi-3: cos narrower than the head
    return phi3_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def _qwen3(q, k, cos, sin, qw, kw):  # norm on [b, s, h, d], transpose, RoPE
    qn = opir.ops.rms_norm(q, qw, EPS).transpose(1, 2)
    kn = opir.ops.rms_norm(k, kw, EPS).transpose(1, 2)
    return qwen3_rope(qn, kn, cos, sin)


def _gemma3(q, k, cos, sin, qw, kw):  # transpose, then the (offset-weight) norm, RoPE
    qn = opir.ops.rms_norm(q.transpose(1, 2), qw, EPS, weight_bias=1.0)
    kn = opir.ops.rms_norm(k.transpose(1, 2), kw, EPS, weight_bias=1.0)
    return qwen3_rope(qn, kn, cos, sin)


def _on_op(q, k, cos, sin, qw, kw):  # the rotation already an opir op (integrations)
    qn = opir.ops.rms_norm(q, qw, EPS).transpose(1, 2)
    kn = opir.ops.rms_norm(k, kw, EPS).transpose(1, 2)
    return opir.ops.rotary_pos_emb(qn, kn, cos, sin)


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "inductor_decomposed"])
@pytest.mark.parametrize(
    ("fn", "rule", "rd"),
    [
        (_rope, "rotary_pos_emb", D),
        (_partial, "rotary_pos_emb", D // 2),
        (_qwen3, "qk_norm_rotary_pos_emb", D),
        (_gemma3, "qk_norm_rotary_pos_emb", D),
        (_on_op, "qk_norm_rotary_pos_emb", D),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_fires_bit_identical(fn, rule, rd, decompose):
    args = _inputs(rd=rd)
    fired, left, unfused, gm = _fused(fn, *args, decompose=decompose)
    assert (fired, left, unfused) == ({rule: 1}, [rule], [])
    with opir.priority({rule: ["native"]}):
        got = gm(*args)
    with opir.priority({"rms_norm": ["native"], "rotary_pos_emb": ["native"]}):
        expected = fn(*args)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)


def _promoted(q, k, cos, sin, qw, kw):
    return qwen3_rope(q.transpose(1, 2), k.transpose(1, 2), cos.float(), sin.float())


def _promoted_normed(q, k, cos, sin, qw, kw):
    return _qwen3(q, k, cos.float(), sin.float(), qw, kw)


def _eps_mismatch(q, k, cos, sin, qw, kw):
    qn = opir.ops.rms_norm(q, qw, EPS).transpose(1, 2)
    kn = opir.ops.rms_norm(k, kw, 1e-5).transpose(1, 2)
    return qwen3_rope(qn, kn, cos, sin)


def _bias_mismatch(q, k, cos, sin, qw, kw):
    qn = opir.ops.rms_norm(q.transpose(1, 2), qw, EPS, weight_bias=1.0)
    kn = opir.ops.rms_norm(k.transpose(1, 2), kw, EPS)
    return qwen3_rope(qn, kn, cos, sin)


def _norm_reused(q, k, cos, sin, qw, kw):
    qn = opir.ops.rms_norm(q, qw, EPS)
    kn = opir.ops.rms_norm(k, kw, EPS)
    return *qwen3_rope(qn.transpose(1, 2), kn.transpose(1, 2), cos, sin), qn


def _q_only(q, k, cos, sin, qw, kw):
    qn = opir.ops.rms_norm(q, qw, EPS).transpose(1, 2)
    return qwen3_rope(qn, k.transpose(1, 2), cos, sin)


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "inductor_decomposed"])
@pytest.mark.parametrize(
    ("fn", "fired", "unfused"),
    [
        (_promoted, {}, [("add", "dtype mismatch")] * 2),
        (_promoted_normed, {}, [(op, "dtype mismatch") for op in ("rms_norm",) * 2 + ("add",) * 2]),
        (_eps_mismatch, {"rotary_pos_emb": 1}, [("rms_norm", "epsilon mismatch")] * 2),
        (_bias_mismatch, {"rotary_pos_emb": 1}, [("rms_norm", "weight_bias mismatch")] * 2),
        (_norm_reused, {"rotary_pos_emb": 1}, [("rms_norm", "has another user")] * 2),
        (_q_only, {"rotary_pos_emb": 1}, [("rms_norm", "only q is normed")]),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_left_unfused_with_a_reason(fn, fired, unfused, decompose):
    args = _inputs()
    got_fired, _, got_unfused, gm = _fused(fn, *args, decompose=decompose)
    assert got_fired == fired
    assert [op for op, _ in got_unfused] == [op for op, _ in unfused]
    for (_, reason), (_, want) in zip(got_unfused, unfused, strict=True):
        assert want in reason, got_unfused
    with opir.priority({"rms_norm": ["native"], "rotary_pos_emb": ["native"]}):
        for a, b in zip(gm(*args), fn(*args), strict=True):
            assert torch.equal(a, b)


def _vllm(positions, q, k, qw, kw, cache):
    return _vllm_form(positions, q, k, qw, kw, cache, key=True)


def _vllm_form(positions, q, k, qw, kw, cache, key):
    """vLLM's Qwen3 attention: per-head norms on views, then rotary_embedding."""
    t = q.shape[0]
    qn = opir.ops.rms_norm(q.view(t, -1, D), qw, EPS).view(q.shape)
    kn = opir.ops.rms_norm(k.view(t, -1, D), kw, EPS).view(k.shape)
    return opir.ops.rotary_embedding(positions, qn, kn if key else None, D, cache, True)


def _vllm_no_key(positions, q, k, qw, kw, cache):
    return _vllm_form(positions, q, k, qw, kw, cache, key=False)


@pytest.mark.parametrize("decompose", [False, True], ids=["aten", "inductor_decomposed"])
def test_vllm_qk_norm_rope(decompose):
    g = torch.Generator().manual_seed(1)
    positions = torch.randint(0, 16, (S,), generator=g)
    qkv = torch.randn(S, (HQ + 2 * HK) * D, generator=g).bfloat16()
    q, k = qkv[:, : HQ * D], qkv[:, HQ * D : (HQ + HK) * D]  # slices of one qkv buffer
    *_, qw, kw = _inputs()
    cache = rotary.cos_sin_cache(16, D, dtype=torch.bfloat16)
    args = (positions, q, k, qw, kw, cache)
    fired, left, unfused, gm = _fused(_vllm, *args, decompose=decompose)
    assert (fired, left, unfused) == ({"qk_norm_rope": 1}, ["qk_norm_rope"], [])
    with opir.priority({"qk_norm_rope": ["native"]}):
        got = gm(*args)
    with opir.priority({"rms_norm": ["native"], "rotary_embedding": ["native"]}):
        expected = _vllm(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    fired, left, unfused, _ = _fused(_vllm_no_key, *args, decompose=decompose)
    assert fired == {} and sorted(left) == ["rms_norm", "rotary_embedding"]  # k unused
    assert unfused[0][0] == "rms_norm" and "key is None" in unfused[0][1], unfused
    wide = (positions, q, k, torch.ones(HQ * D).bfloat16(), torch.ones(HK * D).bfloat16(), cache)
    fired, left, unfused, _ = _fused(_vllm_whole_width, *wide, decompose=decompose)
    assert fired == {} and [op for op, _ in unfused] == ["rms_norm"] * 2
    assert "not per head" in unfused[0][1], unfused


def _vllm_whole_width(positions, q, k, qw, kw, cache):
    """OLMo-2's norms over all heads at once: not per head, must not fuse."""
    qn, kn = opir.ops.rms_norm(q, qw, EPS), opir.ops.rms_norm(k, kw, EPS)
    return opir.ops.rotary_embedding(positions, qn, kn, D, cache, True)


class _Qwen3Block(nn.Module):
    """transformers' own Qwen3Attention (SDPA), with its q/k norms as opir layers (what
    opir.integrations.transformers puts there), and its rotary module."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Qwen3Config
        from transformers.models.qwen3 import modeling_qwen3 as qwen3

        config = Qwen3Config(
            hidden_size=32, num_attention_heads=HQ, num_key_value_heads=HK, head_dim=D,
            intermediate_size=64, num_hidden_layers=1, vocab_size=16, rms_norm_eps=EPS,
        )  # fmt: skip
        config._attn_implementation = "sdpa"
        self.attn = qwen3.Qwen3Attention(config, layer_idx=0)
        self.rotary = qwen3.Qwen3RotaryEmbedding(config)
        for name in ("q_norm", "k_norm"):
            norm = opir.layers.RMSNorm(D, eps=EPS)
            with torch.no_grad():
                norm.weight.uniform_(0.5, 1.5)
            setattr(self.attn, name, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(x.shape[1]).unsqueeze(0)
        cos_sin = self.rotary(x, position_ids)
        return self.attn(x, cos_sin, attention_mask=None)[0]


@pytest.mark.slow
@pytest.mark.parametrize("inductor", [False, True], ids=["aot", "inductor"])
def test_compiled_qwen3_attention(inductor):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Qwen3Block().bfloat16().eval()
    x = torch.randn(1, 6, 32).bfloat16()
    compiled = opir.compile(model, options={"inductor": inductor})
    with torch.no_grad():
        got = compiled(x)
        expected = model(x)
    report = compiled.opir_report.last
    assert report.fusions == {"qk_norm_rotary_pos_emb": 1}
    assert [e.op for e in report.lowered] == ["qk_norm_rotary_pos_emb"]
    if not inductor:  # the same ATen ops around the fused one: bit for bit with eager
        assert torch.equal(got, expected)
    else:  # Inductor keeps the RoPE arithmetic in fp32 (as it does in plain torch.compile)
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
