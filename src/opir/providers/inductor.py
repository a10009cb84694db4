"""The ``inductor`` provider: each op's native function compiled by torch.compile.

Compiled lazily, on the first call with a given *argument kind* (tensor dtypes,
which optional arguments are None, the values of float/bool arguments), with
``dynamic=True`` so token counts and hidden sizes do not recompile (Dynamo
still specialises sizes 0 and 1). Each kind gets its own copy of the native
function's code object, hence its own Dynamo cache and recompile budget, so a
long-running process that sees many dtypes never hits Dynamo's recompile limit
(which would silently fall back to eager).

Under a tracer (a dispatch mode is active, or Dynamo is compiling an outer
graph) the impl calls the native function directly, so the outer graph holds
its aten ops and the outer compiler fuses them.

Any op can use it: ``register(op)``; the built-in ops are registered here.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

import torch

from opir.core.op import Op
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

PROVIDER = "inductor"
_dispatch_mode_depth = torch._C._len_torch_dispatch_stack
_dynamo_compiling = torch.compiler.is_dynamo_compiling


def _kind(args: tuple) -> tuple:
    """What decides a recompile apart from shapes."""
    return tuple(
        a.dtype
        if isinstance(a, torch.Tensor)
        else (type(a), a if isinstance(a, float | bool) else None)
        for a in args
    )


class CompiledNative:
    """``native(*args)`` run through one torch.compile'd copy per argument kind."""

    def __init__(self, op: Op) -> None:
        self.op = op
        self.compiled: dict[tuple, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if _dispatch_mode_depth() or _dynamo_compiling():
            return self.op.native(*args)
        kind = _kind(args)
        fn = self.compiled.get(kind)
        if fn is None:
            fn = self._compile(kind)
        return fn(*args)

    def _compile(self, kind: tuple) -> Callable[..., Any]:
        with self._lock:
            if kind not in self.compiled:
                native = self.op.native
                code = native.__code__.replace(
                    co_name=f"{native.__name__}_inductor_{len(self.compiled)}"
                )
                copy = types.FunctionType(
                    code, native.__globals__, code.co_name, native.__defaults__
                )
                self.compiled[kind] = torch.compile(copy, dynamic=True, fullgraph=True)
            return self.compiled[kind]


def register(op: Op) -> CompiledNative:
    """Register the ``inductor`` impl of ``op`` (unconditional, never inplace)."""
    impl = CompiledNative(op)

    def call(*args: Any) -> Any:
        return impl(*args)

    # Same signature as the native function, so the schema check passes.
    call.__signature__ = op.signature  # type: ignore[attr-defined]
    call.__annotations__ = dict(op.native.__annotations__)
    call.__name__ = f"inductor_{op.name}"
    op.register_impl(PROVIDER)(call)
    return impl


compiled = {op.name: register(op) for op in (rms_norm, fused_add_rms_norm, rms_norm_gated)}
