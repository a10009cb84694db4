"""RoPE (and Qwen3/Gemma 3's q/k norms + RoPE) of Hugging Face models on opir:
``apply`` puts an ``AppliedRotary`` in the modeling module's ``apply_rotary_pos_emb``
global, runs it only inside the applied model's attention calls, and ``revert`` puts
the original function back. Per-family logits and tokens are checked in
test_transformers.py and test_coverage.py; this file checks the mechanism."""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import threading
from collections import Counter

import pytest
import torch

import opir
from opir.integrations import _rotary
from opir.integrations.transformers import apply, revert
from opir.ops import qk_norm_rotary_pos_emb, rotary_pos_emb

from .models import build

NATIVE = {
    op: ["native"]
    for op in (
        "rms_norm",
        "fused_add_rms_norm",
        "rms_norm_gated",
        "rotary_pos_emb",
        "qk_norm_rotary_pos_emb",
    )
}
IDS = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))


def _home(model):
    return sys.modules[type(model).__module__]


def _original(home):
    """The modeling module's own function. Applied models of other tests that were
    never reverted may still hold an ``AppliedRotary`` there; once they are collected,
    the last ``revert`` puts the original back."""
    gc.collect()
    current = home.apply_rotary_pos_emb
    return getattr(current, "opir_original", current)


def _logits(model):
    with torch.inference_mode():
        return model(IDS).logits


def _ops(model):
    with opir.trace() as trace, torch.inference_mode():
        model(IDS)
    return Counter((r.op, r.provider) for r in trace.records)


@pytest.fixture(scope="module")
def llama():
    model = build("llama", torch.bfloat16)
    return model, _logits(model)


def test_function_is_replaced_scoped_and_restored(llama):
    model, logits = llama
    home = _home(model)
    original = _original(home)
    stock = copy.deepcopy(model)  # a stock model of the same family in the same process
    report = apply(model, priority=NATIVE)
    try:
        what = "opir.ops.rotary_pos_emb in place of modeling_llama.apply_rotary_pos_emb"
        assert report.rotary == {"LlamaAttention": (2, what)}
        assert isinstance(home.apply_rotary_pos_emb, _rotary.AppliedRotary)
        assert home.apply_rotary_pos_emb.opir_original is original
        assert _ops(model)[("rotary_pos_emb", "native")] == 2
        assert torch.equal(_logits(model), logits)
        # the stock model calls the same global, and runs the original function
        assert not any(op == "rotary_pos_emb" for op, _ in _ops(stock))
        assert torch.equal(_logits(stock), logits)
        assert "RoPE on opir in 2 attention module(s)" in str(report)
    finally:
        assert revert(model) == 7  # 5 norms and 2 attention modules
    assert home.apply_rotary_pos_emb is original
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert torch.equal(_logits(model), logits)


def test_two_models_share_the_function_until_the_last_revert(llama):
    model, logits = llama
    home = _home(model)
    original = _original(home)
    other = copy.deepcopy(model)
    apply(model, priority=NATIVE)
    apply(other, priority=NATIVE)
    installed = home.apply_rotary_pos_emb
    revert(model)
    assert home.apply_rotary_pos_emb is installed  # `other` still uses it
    assert _ops(other)[("rotary_pos_emb", "native")] == 2
    assert not any(op == "rotary_pos_emb" for op, _ in _ops(model))
    revert(other)
    assert home.apply_rotary_pos_emb is original
    assert torch.equal(_logits(other), logits)


def test_rotary_false_leaves_rope_alone(llama):
    model, _ = llama
    before = _home(model).apply_rotary_pos_emb
    report = apply(model, rotary=False)
    try:
        assert report.rotary == {} and _home(model).apply_rotary_pos_emb is before
    finally:
        revert(model)


def test_deepcopy_and_pickle_of_an_applied_model(llama):
    model, logits = llama
    apply(model, priority=NATIVE)
    try:
        twin = copy.deepcopy(model)
        assert _ops(twin)[("rotary_pos_emb", "native")] == 2
        assert torch.equal(_logits(twin), logits)
        again = pickle.loads(pickle.dumps(model))
        assert torch.equal(_logits(again), logits)
        revert(twin)
        revert(again)
    finally:
        revert(model)


def test_qwen3_q_k_norms_fused_with_rope_bit_exactly():
    model = build("qwen3", torch.bfloat16)
    stock = copy.deepcopy(model)
    report = apply(model, priority=NATIVE)
    try:
        assert report.fused_qk_norm == {"Qwen3Attention": 2}
        ops = _ops(model)
        # 2 layers x (input, post-attention) + final norm; q/k norms inside the fused op
        assert ops == Counter({("rms_norm", "native"): 5, ("qk_norm_rotary_pos_emb", "native"): 2})
        assert torch.equal(_logits(model), _logits(stock))
    finally:
        revert(model)
    # without the fusion: the same numbers through the separate ops
    report = apply(model, priority=NATIVE, fuse_qk_norm=False)
    try:
        assert report.fused_qk_norm == {}
        assert _ops(model)[("rotary_pos_emb", "native")] == 2
        assert torch.equal(_logits(model), _logits(stock))
    finally:
        revert(model)


def test_threads_keep_their_own_attention_stack():
    # two threads run applied models of one family (one shared function) at once
    model = build("qwen3", torch.float32)
    stock = _logits(model)
    twin = copy.deepcopy(model)
    apply(model, priority=NATIVE)
    apply(twin, priority=NATIVE)
    results: list = []

    def work(m):
        for _ in range(4):
            results.append(torch.equal(_logits(m), stock))

    threads = [threading.Thread(target=work, args=(m,)) for m in (model, twin)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        revert(model)
        revert(twin)
    assert results == [True] * 8


def test_fused_deferral_never_skips_a_norm_silently():
    model = build("qwen3", torch.float32)
    apply(model, priority=NATIVE)
    attention = model.model.layers[0].self_attn
    try:
        # an attention call whose rotary call never comes: an error, not a skipped norm
        enter = _rotary._enter_of(attention)
        enter(attention, ())
        assert attention.q_norm(torch.randn(1, 3, 4, 16)).shape == (1, 3, 4, 16)
        with pytest.raises(RuntimeError, match="never came"):
            _rotary._Exit(enter)(attention, (), None)
        # a rotary call on a tensor the deferred norm did not produce: refused loudly
        enter(attention, ())
        x = torch.randn(1, 3, 4, 16)
        attention.q_norm(x)
        attention.k_norm(torch.randn(1, 3, 2, 16))
        cos = torch.randn(1, 3, 16)
        with pytest.raises(RuntimeError, match="other tensors"):
            enter.function(x.clone().transpose(1, 2), x.transpose(1, 2), cos, cos)
        enter.function.stack().clear()
        # outside an attention call the layers normalise as usual
        y = attention.q_norm(x)
        assert not torch.equal(y, x)
    finally:
        revert(model)


def test_call_forms_and_keys_verified_on_first_use():
    model = build("llama", torch.float32)
    apply(model, priority=NATIVE)
    attention = model.model.layers[0].self_attn
    enter = _rotary._enter_of(attention)
    function = enter.function
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 4, 16, generator=gen), torch.randn(2, 3, 2, 16, generator=gen)
    cos, sin = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    forms = [
        ((q.transpose(1, 2), k.transpose(1, 2), cos, sin), {}, True),
        ((q, k, cos, sin), {"unsqueeze_dim": 2}, True),  # a key verified now, on first use
        ((q, k), {"cos": cos, "sin": sin, "unsqueeze_dim": 2}, True),
        ((q.bfloat16(), k.bfloat16(), cos, sin), {"unsqueeze_dim": 2}, True),  # promotion
        ((q, k, cos[:, :, :8], sin[:, :, :8]), {"unsqueeze_dim": 2}, False),  # llama raises
    ]
    enter(attention, ())
    try:
        for args, kwargs, runs_opir in forms:
            try:
                want = function.opir_original(*args, **kwargs)
            except RuntimeError:
                with pytest.raises(RuntimeError):
                    function(*args, **kwargs)  # the original runs (and raises) again
                assert not runs_opir
                continue
            with opir.trace() as trace:
                got = function(*args, **kwargs)
            assert _rotary._same(tuple(got), want)
            assert bool(trace.records) == runs_opir
    finally:
        function.stack().clear()
        revert(model)


def test_look_alikes_are_left_alone_with_reasons():
    # interleaved cos/sin (Helium) and a one-tensor signature (Gemma 3n)
    for family, reason in (("helium", "numerics differ"), ("gemma3n", "takes (x, cos, sin")):
        model = build(family, torch.float32)
        report = apply(model, priority=NATIVE)
        try:
            ((count, why),) = report.rotary_left_alone.values()
            assert count == 2 and reason in why, why
            assert not isinstance(_home(model).apply_rotary_pos_emb, _rotary.AppliedRotary)
        finally:
            revert(model)


@pytest.mark.slow
def test_compiled_forward_keeps_the_logits():
    # fuse=False: no compiler fusion (its silu_mul is correctly rounded, not torch's
    # silu), so the compiled applied model must give stock's logits bit for bit
    model = build("qwen3", torch.float32)
    stock = _logits(model)
    apply(model, priority=NATIVE)
    original = model.forward
    torch._dynamo.reset()
    model.forward = opir.compile(model.forward, options={"inductor": False, "fuse": False})
    try:
        assert torch.equal(_logits(model), stock)
    finally:
        model.forward = original
        revert(model)


def _cpu_has(op) -> bool:
    impl = op.impls.get("cpu")
    return impl is not None and impl.supported


@pytest.mark.skipif(
    not (_cpu_has(rotary_pos_emb) and _cpu_has(qk_norm_rotary_pos_emb)),
    reason="the cpu provider has no rotary kernels in this build",
)
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_cpu_provider_bit_exact_in_bf16(family):
    model = build(family, torch.bfloat16)
    stock = _logits(model)
    cpu = {op: ["cpu", "native"] for op in ("rotary_pos_emb", "qk_norm_rotary_pos_emb")}
    apply(model, priority={**NATIVE, **cpu})
    try:
        ops = _ops(model)
        assert any(p == "cpu" and op.endswith("rotary_pos_emb") for op, p in ops), ops
        assert torch.equal(_logits(model), stock)
    finally:
        revert(model)
