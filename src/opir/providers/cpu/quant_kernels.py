"""The cpu int8 / fp8 quantization kernels (``quant.cpp``): launchers, ``torch.ops.opir_cpu.*``.

The third source family of the cpu provider, laid out like ``activation_kernels.py``:
the custom ops are defined when ``opir.providers.cpu`` is imported, before any
C++ is built, and build or load the extension on their first call. ``load()``
(what ``quant_impls.PROVIDER`` loads) builds the extension and returns the
launchers by op name.

The two fused add + norm ops write the new residual in place (their impls are
in-place impls of ``maybe_inplace``; functional calls run them on a clone of
the residual, as opir does for every in-place impl). Their custom ops,
``opir_cpu::fused_add_rms_norm_quant_`` and ``..._dynamic_quant_``, mutate
``x_residual`` and return what is new (q, and the scales), so traced graphs keep
the in-place write; the eager launchers return the op's full result.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

import torch

import opir.providers.cpu.build as build
from opir.core.op import Op
from opir.ops import quant as ops
from opir.providers.cpu.kernels import NAMESPACE, typed
from opir.providers.kit import define

FAMILY = "quant"
"""The kernel source family (``quant.cpp``, built as its own extension)."""

FUNCTIONAL_OPS = (
    ops.static_quant,
    ops.dynamic_quant,
    ops.rms_norm_quant,
    ops.rms_norm_dynamic_quant,
    ops.silu_and_mul_quant,
    ops.silu_and_mul_dynamic_quant,
)
"""Ops whose kernel (a pybind function of the op's name) returns the op's result."""

INPLACE_OPS = (ops.fused_add_rms_norm_quant, ops.fused_add_rms_norm_dynamic_quant)
"""Ops whose kernel writes the new residual into ``x_residual`` (or, when that tensor's
own elements overlap, into a fresh one it returns) and returns ``[q, (scale,) residual]``."""


def extension() -> Any:
    """The pybind module of the quant kernels, after building/loading it once."""
    return build.load(FAMILY)


def load() -> types.SimpleNamespace:
    """The eager launchers by op name (builds the extension; ``ProviderBuildError`` if
    that fails), plus ``<op>_traced`` for the in-place ops (calls of their custom ops)."""
    ext = extension()
    launchers: dict[str, Callable[..., Any]] = {
        op.name: typed(getattr(ext, op.name), op) for op in FUNCTIONAL_OPS
    }
    for op in INPLACE_OPS:
        launchers[op.name] = typed(_as_tuple(getattr(ext, op.name)), op)
        launchers[f"{op.name}_traced"] = _traced(op)
    return types.SimpleNamespace(**launchers)


def _as_tuple(kernel: Callable[..., list[torch.Tensor]]) -> Callable[..., Any]:
    def launch(*args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(kernel(*args))

    return launch


def _traced(op: Op) -> Callable[..., Any]:
    custom = getattr(torch.ops.opir_cpu, f"{op.name}_").default

    def run(*args: Any) -> tuple[torch.Tensor, ...]:
        new = custom(*args)
        new = new if isinstance(new, tuple | list) else (new,)
        return (*new, args[1])

    run.__name__ = f"cpu_{op.name}_traced"
    return run


def _calling(name: str) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        return getattr(extension(), name)(*args)

    return run


for _op in FUNCTIONAL_OPS:
    define(NAMESPACE, _op, _calling(_op.name), device_types="cpu")
del _op


# --- the in-place custom ops: x_residual mutated, q (and the scales) returned ---------


def _writing_residual(op: Op) -> Callable[..., Any]:
    name = op.name

    def run(*args: Any, **kwargs: Any) -> Any:  # torch passes what the caller gave
        args = op.complete_args(args, kwargs)
        *new, residual = getattr(extension(), name)(*args)
        if residual.data_ptr() != args[1].data_ptr() and residual.numel():
            raise ValueError(
                f"opir_cpu::{name}_: x_residual's elements overlap each other (an expanded "
                "tensor?), so the new residual cannot be written in place; pass a tensor "
                "with separate elements (e.g. .clone()) or call the functional op"
            )
        return new[0] if len(new) == 1 else tuple(new)

    return run


def _fake(dynamic: bool) -> Callable[..., Any]:
    def fake(x: torch.Tensor, *args: Any) -> Any:
        q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
        if not dynamic:
            return q
        return q, torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)

    return fake


for _inplace_op in INPLACE_OPS:
    _dynamic = _inplace_op is ops.fused_add_rms_norm_dynamic_quant
    _params = cast(str, _inplace_op.sig.inplace_schema).rsplit("->", 1)[0]
    _defined = torch.library.custom_op(
        f"{NAMESPACE}::{_inplace_op.name}_",
        _writing_residual(_inplace_op),
        mutates_args=("x_residual",),
        device_types="cpu",
        schema=_params + ("-> (Tensor, Tensor)" if _dynamic else "-> Tensor"),
    )
    _defined.register_fake(_fake(_dynamic))
del _inplace_op, _dynamic, _params, _defined
