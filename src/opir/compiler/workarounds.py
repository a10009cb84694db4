"""Workarounds for upstream bugs that lowering applies before Inductor sees a graph.

Each entry names the op, the bug and the narrowest condition under which the
workaround applies; ``tests/compiler/test_upstream_bugs.py`` keeps a torch-only
reproduction of each bug as a strict xfail, so the day torch fixes it the test
suite says so and the entry can go.

* ``rms_norm_gated`` — torch 2.13 Inductor miscompiles ``norm(x * exp-like(g))``
  (exp, sigmoid, silu of the gate) when ``x`` is a transposed 2-D tensor and
  the gate is not (errors up to ~70 on CPU). A transposed gate too, a 3-D
  transpose or a contiguous ``x`` are compiled correctly. Workaround: copy
  ``x`` to a contiguous tensor when it is not contiguous and its strides differ
  from the gate's (one copy of x, only for that layout, and only when the
  chosen impl is traced into ATen that Inductor compiles, not a custom kernel).
  The copy is :data:`contiguous_copy`, an opaque custom op: an ``aten.clone``
  would be inlined into the very kernel Inductor miscompiles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from opir.core.op import Op
from opir.ops import rms_norm_gated


def _gated_norm(
    x: object, gate: object, weight: object, epsilon: object, group_size: object = None,
    norm_before_gate: object = False, fp32_multiply: object = False,
) -> tuple[str, ...]:  # fmt: skip
    if not (isinstance(x, torch.Tensor) and isinstance(gate, torch.Tensor)):
        return ()
    if x.is_contiguous() or x.stride() == gate.stride():
        return ()
    return ("x",)


@torch.library.custom_op("opir_compiler::contiguous_copy", mutates_args=())
def contiguous_copy(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy that Inductor cannot fuse into its consumer."""
    return x.clone(memory_format=torch.contiguous_format)


@contiguous_copy.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# op -> f(*complete fake args) -> names of the inputs to make contiguous
CONTIGUOUS: dict[Op, Callable[..., tuple[str, ...]]] = {rms_norm_gated: _gated_norm}


def contiguous_inputs(op: Op, fake_args: tuple) -> tuple[str, ...]:
    """Names of ``op``'s inputs that must be made contiguous before Inductor compiles it."""
    rule = CONTIGUOUS.get(op)
    return rule(*fake_args) if rule is not None else ()
