"""A user's script, typed: `make typecheck` runs mypy on it (and tests/test_docs.py runs it).

Every ``assert_type`` states what a type checker must infer from opir's
annotations: op calls typed by their native functions (norms and activations),
``opir.set_default``, ``maybe_inplace`` on ops registered with ``allow_inplace=True``,
layers, ``register_op`` used bare and with options, ``register_impl`` and
``opir.compile``.
"""

from __future__ import annotations

from typing import assert_type

import torch

import opir
from opir.layers import GemmaRMSNorm, RMSNorm, RMSNormGated


def built_in_ops() -> None:
    x = torch.randn(2, 8)
    w = torch.ones(8)
    assert_type(opir.ops.rms_norm(x, w, 1e-6), torch.Tensor)
    assert_type(opir.ops.rms_norm(x, None, epsilon=1e-6, variance_size=4), torch.Tensor)
    out, new_residual = opir.ops.fused_add_rms_norm(x, x.clone(), w, 1e-6)
    assert_type(out, torch.Tensor)
    assert_type(new_residual, torch.Tensor)
    donated = opir.ops.fused_add_rms_norm.maybe_inplace(x.clone(), x.clone(), w, 1e-6)
    assert_type(donated, tuple[torch.Tensor, torch.Tensor])
    assert_type(opir.ops.rms_norm_gated(x, x, w, 1e-6), torch.Tensor)
    assert_type(opir.ops.rms_norm.native(x, w, 1e-6), torch.Tensor)
    assert_type(opir.ops.rms_norm.dispatch(x, w, 1e-6).provider, str)
    assert_type(opir.ops.rms_norm.get_priority(), list[str])


def activation_ops() -> None:
    x = torch.randn(2, 8)  # [gate | up], d = 4
    assert_type(opir.ops.silu_and_mul(x), torch.Tensor)
    opir.set_default({"silu_and_mul": ["native"]})  # a Mapping[str, Sequence[str]]
    assert_type(opir.ops.silu_and_mul.get_priority(), list[str])
    assert opir.ops.silu_and_mul(x).shape == (2, 4)


def layers() -> None:
    x = torch.randn(2, 8)
    norm = RMSNorm(8, eps=1e-5)
    norm(x)  # nn.Module.__call__ is untyped in torch; forward carries the types
    assert_type(norm.forward(x), torch.Tensor | tuple[torch.Tensor, torch.Tensor])
    assert_type(
        GemmaRMSNorm(8).forward(x, x.clone()), torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    )
    assert_type(RMSNormGated(8, group_size=4).forward(x, torch.randn(2, 8)), torch.Tensor)


@opir.register_op
def typed_scale(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return x * alpha


@opir.register_op(name="typed_add_scale", allow_inplace=True)
def add_scale(x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + x_other
    return s * 2, s


def contiguous(x: torch.Tensor, alpha: float = 2.0) -> bool:
    return x.is_contiguous()


@typed_scale.register_impl("typed_mine", supports_args=contiguous)
def typed_scale_mine(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return torch.mul(x, alpha)


def own_ops() -> None:
    scale_op: opir.Op[[torch.Tensor, float], torch.Tensor] = typed_scale
    pair = tuple[torch.Tensor, torch.Tensor]
    add_op: opir.InplaceOp[[torch.Tensor, torch.Tensor], pair] = add_scale
    assert_type(scale_op(torch.ones(3), 1.0), torch.Tensor)
    assert_type(add_op.maybe_inplace(torch.ones(3), torch.ones(3)), pair)
    assert_type(typed_scale(torch.ones(3)), torch.Tensor)
    assert_type(typed_scale(torch.ones(3), alpha=3.0), torch.Tensor)
    typed_scale.set_default(["typed_mine", "native"])
    with typed_scale.set_priority(["native"]), opir.trace() as t:
        typed_scale(torch.ones(3))
    assert t.records[-1].provider == "native"


def compiled() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), RMSNorm(8))
    fast = opir.compile(model, options={"inductor": False})
    with torch.inference_mode():
        fast(torch.randn(2, 8))
    print(opir.compiler.report_of(fast).last.fusions)


if __name__ == "__main__":
    built_in_ops()
    activation_ops()
    layers()
    own_ops()
    compiled()
