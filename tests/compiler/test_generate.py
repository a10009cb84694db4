"""Generation under compile with a tiny random-weight Hugging Face Llama: the
documented recipes (compiled forward, ``CompileConfig(backend=opir.backend())``)
give eager's tokens and a reachable report."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.layers import RMSNorm

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

NEW_TOKENS = 6


def _tiny_llama():
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    # Swap the norms for opir's by hand (sharing the weights), so the graphs hold opir ops.
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "LlamaRMSNorm":
                norm = RMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                norm.weight = child.weight
                setattr(parent, name, norm)
    return model


@pytest.fixture(scope="module")
def model_and_eager():
    model = _tiny_llama()
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return model, ids, eager


def test_generate_through_a_compiled_forward(model_and_eager):
    model, ids, eager = model_and_eager
    torch._dynamo.reset()
    original = model.forward
    model.forward = opir.compile(model.forward, options={"inductor": False})
    try:
        with torch.no_grad():
            got = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        report = opir.compiler.report_of(model)
    finally:
        model.forward = original
    assert torch.equal(got, eager)
    assert report.graphs and report.last.opir_nodes_left == 0
    assert report.last.fusions.get("add_rms_norm", 0) >= 2  # residual adds + norms in layers


def test_generate_through_hf_compile_config(model_and_eager):
    model, ids, eager = model_and_eager
    backend = opir.backend()
    config = transformers.CompileConfig(backend=backend)  # HF's default mode="reduce-overhead"
    config._compile_all_devices = True  # HF compiles on cuda/xpu only unless told (CPU here)
    torch._dynamo.reset()
    with torch.no_grad():
        got = model.generate(
            ids, max_new_tokens=NEW_TOKENS, do_sample=False,
            cache_implementation="static", compile_config=config,
        )  # fmt: skip
    assert torch.equal(got, eager)
    # HF deep-copies the config (and the backend); the copy is the same backend
    assert backend.report.graphs, "HF compiled nothing"
    assert backend.report.last.opir_nodes_left == 0
    assert backend.report.last.mode == "reduce-overhead"  # handed to Inductor
