"""Tiny random-weight transformers models built from configs (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {}),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    ),
    "gemma": ("GemmaConfig", {}),
    "gemma2": ("Gemma2Config", {}),
    "gemma3": ("Gemma3TextConfig", {}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
    "qwen3_next": (
        "Qwen3NextConfig",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            linear_num_value_heads=4,
            linear_num_key_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            layer_types=["linear_attention", "full_attention"],
        ),
    ),
    "mamba2": (
        "Mamba2Config",
        dict(
            vocab_size=128,
            hidden_size=64,
            num_hidden_layers=2,
            num_heads=8,
            head_dim=16,
            state_size=16,
            n_groups=2,
            expand=2,
            chunk_size=16,
        ),
    ),
}


# Families covered once their numerics entered the contract (fp32_multiply, weightless
# norms, per-key envelopes): checked on logits only (tests/integrations/test_coverage.py).
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
COVERAGE: dict[str, tuple[str, dict]] = {
    "olmo3": ("Olmo3Config", {}),
    "flex_olmo": ("FlexOlmoConfig", dict(num_experts=4, num_experts_per_tok=2)),
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "helium": ("HeliumConfig", {}),
    "afmoe": ("AfmoeConfig", _MOE),
    "nanochat": ("NanoChatConfig", {}),
    "falcon_mamba": ("FalconMambaConfig", dict(mixer_rms_eps=1e-6)),
    "falcon_h1": (
        "FalconH1Config",
        dict(
            mamba_d_ssm=64,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=16,
            mamba_chunk_size=16,
            mamba_rms_norm=True,  # the gated norm (n_groups layout, fp32 multiply)
        ),
    ),
    "nemotron_h": (
        "NemotronHConfig",
        dict(
            hybrid_override_pattern="M*",
            mamba_num_heads=4,
            mamba_head_dim=16,
            n_groups=2,
            ssm_state_size=16,
            chunk_size=16,
        ),
    ),
    "gemma3n": (
        "Gemma3nTextConfig",
        dict(
            layer_types=["sliding_attention", "full_attention"],
            num_kv_shared_layers=0,
            activation_sparsity_pattern=[0.0, 0.0],
            hidden_size_per_layer_input=16,
            vocab_size_per_layer_input=128,
            laurel_rank=8,
            altup_num_inputs=2,
        ),
    ),
}


def build(family: str, dtype: torch.dtype) -> torch.nn.Module:
    config_name, extra = FAMILIES.get(family) or COVERAGE[family]
    kwargs = dict(extra) if family == "mamba2" else {**_COMMON, **extra}
    config = getattr(transformers, config_name)(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    if family == "gemma3n":  # its text-only causal LM is not in the Auto mapping
        model = transformers.Gemma3nForCausalLM(config).to(dtype).eval()
    else:
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # non-trivial norm weights (init is ones / zeros)
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.3 + 0.1)
    return model


def build_t5(dtype: torch.dtype) -> torch.nn.Module:
    config = transformers.T5Config(
        vocab_size=128,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.3 + 0.1)
    return model


# RoPE per family after apply (issue 18): the opir computation named in report.rotary
# ("" = plain opir.ops.rotary_pos_emb), "left alone" (report.rotary_left_alone: Helium's
# interleaved cos/sin, Gemma 3n's one-tensor signature), or absent (no RoPE attention).
ROTARY: dict[str, str] = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3"), ""
    ),
    **dict.fromkeys(("phi3", "qwen3_next", "afmoe", "falcon_h1"), ""),
    **dict.fromkeys(("olmo2", "olmo3", "flex_olmo"), " (cast back)"),
    "gpt_oss": " (half cos/sin)",
    "nanochat": " (sin negated)",
    "helium": "left alone",
    "gemma3n": "left alone",
}
# Families whose per-head q/k norms run fused with RoPE (qk_norm_rotary_pos_emb) eagerly.
FUSED_QK_NORM = ("qwen3", "qwen3_moe", "gemma3", "qwen3_next")


def check_rotary(family: str, report) -> None:
    """``report``'s RoPE entries are what ROTARY / FUSED_QK_NORM say for ``family``."""
    expected = ROTARY.get(family)
    if expected is None:
        assert not report.rotary and not report.rotary_left_alone, str(report)
    elif expected == "left alone":
        assert not report.rotary and report.rotary_left_alone, str(report)
    else:
        assert not report.rotary_left_alone, str(report)
        ((_, what),) = report.rotary.values()
        assert what.startswith(f"opir.ops.rotary_pos_emb{expected} in place of"), what
    assert bool(report.fused_qk_norm) == (family in FUSED_QK_NORM), str(report)
