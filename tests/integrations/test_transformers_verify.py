"""apply's verification cannot be passed vacuously, and an applied layer never computes
outside what it verified (issue 14): one test per way the old probe was fooled."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import opir
from opir.core.errors import PriorityError
from opir.integrations.transformers import apply, revert
from opir.layers import GemmaRMSNorm, RMSNorm, RMSNormGated

from .models import build

NATIVE = {op: ["native"] for op in ("rms_norm", "fused_add_rms_norm", "rms_norm_gated")}
H = 16


def _seq(*modules):
    return nn.Sequential(*modules).eval()  # inference: apply warns on a training model


def _x(*shape, dtype=torch.float32, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


def _random_weight(module, seed=1):
    with torch.no_grad():
        w = torch.randn(module.weight.shape, generator=torch.Generator().manual_seed(seed))
        module.weight.copy_(w * 0.5 + 0.25)
    return module


class LlamaNorm(nn.Module):
    """Llama's numerics under an RMSNorm name."""

    def __init__(self, n=H, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class ThreeDGemmaRMSNorm(nn.Module):
    """Gemma's offset weight, but it only accepts [B, S, H] input."""

    def __init__(self, n=H):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))
        self.eps = 1e-6

    def forward(self, x):
        _batch, _seq_len, _hidden = x.shape  # raises unless 3-D
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


def test_module_that_raises_on_some_ranks_is_verified_only_where_it_ran():
    module = _random_weight(ThreeDGemmaRMSNorm())
    stock = copy.deepcopy(module)
    model = _seq(module)
    report = apply(model, priority=NATIVE)
    assert report.replaced == {"ThreeDGemmaRMSNorm": (1, "GemmaRMSNorm")}
    x = _x(2, 5, H)
    assert torch.equal(model[0](x), stock(x))
    with pytest.raises(ValueError):  # rank 2 was not verified: the original runs, and raises
        model[0](_x(3, H))


class AlwaysRaisesRMSNorm(LlamaNorm):
    def forward(self, hidden_states):
        raise RuntimeError("needs inputs the probe never makes")


def test_module_that_raises_on_every_probe_is_left_alone():
    model = _seq(AlwaysRaisesRMSNorm())
    report = apply(model, priority=NATIVE)
    assert report.total_replaced == 0
    assert "raises" in report.left_alone["AlwaysRaisesRMSNorm"][1]


class Dim1RMSNorm(LlamaNorm):
    """Normalises over dim 1: the last dim only for 2-D input."""

    def forward(self, hidden_states):
        h = hidden_states.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(hidden_states.dtype)


def test_norm_over_another_dim_is_caught_by_probing_several_ranks():
    module = _random_weight(Dim1RMSNorm())
    stock = copy.deepcopy(module)
    model = _seq(module)
    apply(model, priority=NATIVE)
    x = _x(2, H, H)  # [B, C, C]: the old [3, H] probe let this through (off by ~1)
    assert torch.equal(model[0](x), stock(x))
    assert torch.equal(model[0](_x(3, H)), stock(_x(3, H)))


def test_mixed_precision_call_gets_the_stock_dtype_and_values():
    # fp32 weight, bf16 x: Llama's `weight * x.to(bf16)` promotes to fp32; opir returns bf16.
    module = _random_weight(LlamaNorm())
    stock = copy.deepcopy(module)
    model = _seq(module)
    apply(model, priority=NATIVE)
    x = _x(3, H, dtype=torch.bfloat16)
    out = model[0](x)
    assert out.dtype == torch.float32 and torch.equal(out, stock(x))


class ScaledRMSNorm(LlamaNorm):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, hidden_states):
        return super().forward(hidden_states) * self.scale


def test_buffer_the_forward_reads_keeps_the_module():
    model = _seq(ScaledRMSNorm())  # scale 1 at apply time: the identity
    report = apply(model, priority=NATIVE)
    assert report.total_replaced == 0 and "ScaledRMSNorm" in report.left_alone
    state = model.state_dict()
    assert set(state) == {"0.weight", "0.scale"}
    state["0.scale"] = torch.tensor(3.0)  # the scale a checkpoint loads later
    model.load_state_dict(state)
    x = _x(3, H)
    assert torch.equal(model(x), 3.0 * LlamaNorm().forward(x))


class DummyWeightRMSNorm(nn.Module):
    """FalconMamba's weightless norm: an unused non-persistent buffer named weight."""

    def __init__(self, n=H):
        super().__init__()
        self.eps = 1e-6
        self.weight = nn.Buffer(torch.ones(n), persistent=False)

    def forward(self, x):
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def test_unused_buffer_is_carried_over():
    module = DummyWeightRMSNorm()
    stock = copy.deepcopy(module)
    model = _seq(module)
    report = apply(model, priority=NATIVE)
    assert report.replaced == {"DummyWeightRMSNorm": (1, "RMSNorm")}
    assert model[0].weight is stock.weight or torch.equal(model[0].weight, stock.weight)
    assert model[0].weight is module.weight  # the buffer object itself, not a copy
    x = _x(2, 5, H, dtype=torch.bfloat16)
    assert torch.equal(model(x), stock(x))


class ResidualRMSNorm(LlamaNorm):
    """``forward(x, residual=None)`` that leaves its inputs alone."""

    def forward(self, x, residual=None):
        if residual is None:
            return super().forward(x)
        s = x.float() + residual.float()
        return super().forward(s.to(x.dtype)), s.to(x.dtype)


def test_residual_form_is_probed_and_never_donates_the_callers_tensors():
    module = _random_weight(ResidualRMSNorm())
    stock = copy.deepcopy(module)
    model = _seq(module)
    apply(model, priority=NATIVE)
    x, r = _x(3, H), _x(3, H, seed=5)
    x0, r0 = x.clone(), r.clone()
    got = model[0](x, r)
    assert torch.equal(x, x0) and torch.equal(r, r0)
    want = stock(x0, r0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


class TupleRMSNorm(LlamaNorm):
    def forward(self, hidden_states):
        return super().forward(hidden_states), None


def test_module_returning_a_tuple_is_left_alone_with_a_reason():
    report = apply(_seq(TupleRMSNorm()))
    assert "returns tuple" in report.left_alone["TupleRMSNorm"][1]


class GroupedRMSNormGated(nn.Module):
    """Gate, then norm per group; group size per instance."""

    def __init__(self, n, group_size):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = 1e-6
        self.group_size = group_size

    def forward(self, hidden_states, gate=None):
        dtype = hidden_states.dtype
        h = hidden_states.float()
        if gate is not None:
            h = h * nn.functional.silu(gate.float())
        g = h.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * g.flatten(-2).to(dtype)


def test_verdict_is_not_shared_between_instances_that_differ():
    a, b = _random_weight(GroupedRMSNormGated(H, 4)), _random_weight(GroupedRMSNormGated(H, 8))
    stock = copy.deepcopy(_seq(a, b))
    model = _seq(a, b)
    apply(model, priority=NATIVE)
    x, gate = _x(3, H), _x(3, H, seed=3)
    for i in (0, 1):
        assert torch.equal(model[i](x, gate), stock[i](x, gate))
    assert (model[0].group_size, model[1].group_size) == (4, 8)


class HalfVarianceRMSNorm(LlamaNorm):
    """Bit-exact with opir in fp32; in bf16 it squares in bf16, which opir never does."""

    def forward(self, hidden_states):
        h = hidden_states
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_applied_in_fp32_then_converted_to_bf16_keeps_stock_numerics():
    module = _random_weight(HalfVarianceRMSNorm())
    stock = copy.deepcopy(module).to(torch.bfloat16)
    model = _seq(module)
    assert apply(model, priority=NATIVE).total_replaced == 1
    model.to(torch.bfloat16)
    x = _x(4, H, dtype=torch.bfloat16)
    assert torch.equal(model(x), stock(x))
    envelope = model[0].opir_envelope  # (x dtype, other dtype, weight dtype, rank, ...)
    bf16_keys = [k for k in envelope if k[0] == k[2] == torch.bfloat16]
    assert bf16_keys and not any(envelope[k] for k in bf16_keys)


def test_olmo2_applied_in_fp32_then_bf16_gives_stock_logits():
    model = build("olmo2", torch.float32)
    stock = copy.deepcopy(model).to(torch.bfloat16)
    apply(model, priority=NATIVE)
    model.to(torch.bfloat16)
    ids = torch.randint(3, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, stock(ids).logits)


def test_priority_is_plain_data_validated_at_apply_deepcopy_and_pickle_safe():
    with pytest.raises(PriorityError, match="rms_nrom"):
        apply(_seq(_random_weight(LlamaNorm())), priority={"rms_nrom": ["native"]})
    model = _seq(_random_weight(LlamaNorm()))
    apply(model, priority=NATIVE)
    assert model[0].opir_priority == NATIVE and "forward" not in vars(model[0])
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight.mul_(3)
    x = _x(3, H)
    assert torch.equal(twin(x), LlamaNorm().forward(x) * twin[0].weight)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    want = model(x)
    with opir.trace() as trace:
        assert torch.equal(loaded(x), want)
    assert [r.provider for r in trace.records] == ["native"]
    assert revert(loaded) == 1 and isinstance(loaded[0], LlamaNorm)


def test_revert_after_assign_load_keeps_the_loaded_parameters():
    model = _seq(_random_weight(LlamaNorm()))
    apply(model, priority=NATIVE)
    new = {"0.weight": torch.full((H,), 2.0)}
    model.load_state_dict(new, assign=True)
    revert(model)
    assert torch.equal(model[0].weight, new["0.weight"])
    x = _x(3, H)
    assert torch.equal(model(x), LlamaNorm().forward(x) * 2.0)


def test_original_argument_names_are_accepted():
    model = _seq(_random_weight(LlamaNorm()))
    stock = copy.deepcopy(model[0])
    apply(model, priority=NATIVE)
    x = _x(3, H)
    assert torch.equal(model[0](hidden_states=x), stock(hidden_states=x))
    with pytest.raises(TypeError):  # a name the original does not take: its own error
        model[0](x=x)


def test_hooks_do_not_run_in_the_probe_and_are_carried_over():
    module = _random_weight(LlamaNorm())
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    model = _seq(module)
    assert apply(model, priority=NATIVE).total_replaced == 1
    assert calls == []
    model(_x(3, H))
    assert calls == [torch.Size([3, H])]
    revert(model)
    model(_x(2, H))
    assert calls[-1] == torch.Size([2, H])


def test_module_under_two_parents_is_replaced_under_both_and_reverted():
    shared = _random_weight(LlamaNorm())
    model = nn.ModuleDict({"a": _seq(shared), "b": _seq(shared)}).eval()
    assert apply(model, priority=NATIVE).total_replaced == 1
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], RMSNorm)
    assert revert(model) == 1
    assert model["a"][0] is shared and model["b"][0] is shared


def test_apply_sub_then_model_is_idempotent_and_one_revert_undoes_it():
    inner = _seq(_random_weight(LlamaNorm()))
    model = _seq(inner, _random_weight(LlamaNorm()))
    assert apply(inner, priority=NATIVE).total_replaced == 1
    assert apply(model, priority=NATIVE).total_replaced == 1  # only the one not yet applied
    revert(model)
    assert not any(isinstance(m, (RMSNorm, GemmaRMSNorm, RMSNormGated)) for m in model.modules())


def test_training_model_warns_at_apply():
    with pytest.warns(UserWarning, match="inference-only"):
        apply(nn.Sequential(LlamaNorm()).train())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(_seq(LlamaNorm()))


class EpsRMSNorm(LlamaNorm):
    """Reads ``eps`` (a read-only alias on opir's layers)."""

    def __init__(self):
        super().__init__()
        del self.variance_epsilon
        self.eps = 1e-6

    def forward(self, hidden_states):
        h = hidden_states.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(hidden_states.dtype)


@pytest.mark.parametrize(("cls", "name"), [(LlamaNorm, "variance_epsilon"), (EpsRMSNorm, "eps")])
def test_attribute_set_after_apply_is_not_ignored(cls, name):
    model = _seq(_random_weight(cls()))
    stock = copy.deepcopy(model)
    apply(model, priority=NATIVE)
    for m in (model[0], stock[0]):
        setattr(m, name, 0.5)
    x = _x(3, H) * 0.1  # rows whose mean square is near eps: the eps matters
    assert torch.equal(model(x), stock(x))


def test_calls_under_autocast_run_the_original():
    model = _seq(_random_weight(LlamaNorm()))
    stock = copy.deepcopy(model)
    apply(model, priority=NATIVE)
    x = _x(3, H)
    with torch.autocast("cpu", dtype=torch.bfloat16), opir.trace() as trace:
        assert torch.equal(model(x), stock(x))
    assert trace.records == []  # never probed under autocast: the original ran
    with opir.trace() as trace:
        model(x)
    assert [r.provider for r in trace.records] == ["native"]
