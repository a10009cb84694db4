"""The ``inductor`` provider: each op's native function compiled by torch.compile.

It serves every op, including ops registered after opir was imported (it
listens to the registry). Compiled lazily, on the first call with a given
*argument kind*, with ``dynamic=True`` so token counts and hidden sizes do not
recompile. The kind is what would otherwise make Dynamo recompile: tensor
dtypes and ranks, which sizes are 0 or 1 (Dynamo specialises those), which
optional arguments are None, the values of ``torch.dtype`` arguments (the
quant ops' ``dtype``), and the bit patterns of float and bool
arguments (a NaN epsilon is one kind, not a new one per call). Each kind gets
its own copy of the native function's code object, hence its own Dynamo cache
and recompile budget, so the recompile limit is never reached; at most
``MAX_KINDS`` kinds are kept (least recently used evicted).

Inputs that are not contiguous are made contiguous first. This bounds the
layouts each compiled copy sees and steps around a torch 2.13 Inductor bug
that normalised transposed inputs wrongly (see the upstream-bug test in
tests/compiler). It costs a copy only for non-contiguous inputs.

Two per-op settings (:data:`SETTINGS`). ``exact_rounding`` compiles with
Inductor's ``emulate_precision_casts``: the natives that compute in the model
dtype (the rotary ops: a bf16 product rounds, then the sum rounds again) would
otherwise be computed in fp32 and rounded once. ``precheck`` runs the op's
data-dependent checks eagerly before the compiled call: the native skips them
while traced (the rotary ops' positions range), and an out-of-range gather in
Inductor's generated CPU code aborts the process instead of raising.

Bad input gets the native function's own exception: when a compiled call
fails, the native function is run eagerly on the same arguments; if it fails
too its error is raised, otherwise the compile failure is reported as a
:class:`~opir.core.errors.DispatchError` naming the provider (never a silent
fallback).

The compiled function is the impl's *eager* function; its traceable function
is the native function itself, so under a tracer (the torch op's kernel, the
compile-time lowering) the outer graph holds the native aten ops and the
outer compiler fuses them.
"""

from __future__ import annotations

import collections
import contextlib
import struct
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch

from opir.core.errors import DispatchError
from opir.core.op import Op
from opir.core.protocols import OpLike
from opir.core.registry import on_register
from opir.ops import rotary as _rotary

PROVIDER = "inductor"
MAX_KINDS = 64
_Tensor = torch.Tensor


class Settings(NamedTuple):
    exact_rounding: bool = False  # Inductor rounds where eager rounds (16-bit intermediates)
    precheck: Callable[[tuple], object] | None = None  # eager checks on the complete args


def _check_rotary_embedding(a: tuple) -> object:
    # (positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim)
    return _rotary.check_rotary_args(a[0], a[1], a[2], a[3], a[4], a[6])


def _check_qk_norm_rope(a: tuple) -> object:
    # (positions, query, key, q_weight, k_weight, epsilon, head_size, cos_sin_cache, ...)
    return _rotary.check_rotary_args(a[0], a[1], a[2], a[6], a[7], a[9], "qk_norm_rope")


SETTINGS: dict[str, Settings] = {
    "rotary_embedding": Settings(True, _check_rotary_embedding),
    "qk_norm_rope": Settings(True, _check_qk_norm_rope),
    "rotary_pos_emb": Settings(True),
    "qk_norm_rotary_pos_emb": Settings(True),
    # the fused quant ops quantise the intermediate rounded to x's dtype (the contract)
    **{
        name: Settings(True)
        for name in (
            "rms_norm_quant",
            "rms_norm_dynamic_quant",
            "rms_norm_group_quant",
            "fused_add_rms_norm_quant",
            "fused_add_rms_norm_dynamic_quant",
            "silu_and_mul_quant",
            "silu_and_mul_dynamic_quant",
            "all_reduce_rms_norm_quant",
        )
    },
}
"""Per-op settings by op name (the defaults for any op not listed)."""


def _kind(args: tuple) -> tuple:
    """What decides a recompile apart from the sizes of dims of size >= 2."""
    kind: list[tuple[Any, Any]] = []
    for a in args:
        if isinstance(a, _Tensor):
            kind.append((a.dtype, tuple(min(size, 2) for size in a.shape)))
        elif isinstance(a, float):
            kind.append((float, struct.pack("<d", a)))  # NaN equals itself by bits
        elif isinstance(a, bool):
            kind.append((bool, a))
        elif isinstance(a, torch.dtype):  # the quant ops' dtype: one compiled copy per value
            kind.append((torch.dtype, a))
        else:
            kind.append((type(a), None))
    return tuple(kind)


class CompiledNative:
    """``native(*args)`` run through one torch.compile'd copy per argument kind."""

    def __init__(self, op: Op) -> None:
        self.op = op
        self.compiled: collections.OrderedDict[tuple, Callable[..., Any]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._copies = 0
        self._floats = frozenset(op.sig.float_positions)
        self.settings = SETTINGS.get(op.name, Settings())

    def __call__(self, *args: Any) -> Any:
        args = tuple(
            a.contiguous() if isinstance(a, _Tensor) and not a.is_contiguous() else a for a in args
        )
        if self._floats:  # an int given for a float parameter is the float's kind
            args = tuple(
                float(a) if i in self._floats and type(a) is int else a for i, a in enumerate(args)
            )
        precheck = self.settings.precheck
        if precheck is not None:
            precheck(args)
        kind = _kind(args)
        fn = self.compiled.get(kind)
        if fn is None:
            fn = self._compile(kind)
        else:
            # least recently *used* goes first; another thread may have evicted it meanwhile
            with contextlib.suppress(KeyError):
                self.compiled.move_to_end(kind)
        try:
            return fn(*args)
        except Exception as compile_error:
            self.op.native(*args)  # invalid input: raises the op's own, clear error
            raise DispatchError(
                f"the '{PROVIDER}' provider failed to compile op '{self.op.name}' for these "
                f"inputs ({type(compile_error).__name__}: {compile_error}). The native function "
                "accepts them; list another provider first, e.g. "
                f"opir.ops.{self.op.name}.set_default(['native'])."
            ) from compile_error

    def _compile(self, kind: tuple) -> Callable[..., Any]:
        with self._lock:
            fn = self.compiled.get(kind)
            if fn is None:
                self._copies += 1
                options: dict[str, str | int | bool | Callable[..., Any]] | None = None
                if self.settings.exact_rounding:
                    options = {"emulate_precision_casts": True}
                fn = torch.compile(
                    _fresh_copy(self.op.native, self._copies),
                    dynamic=True,
                    fullgraph=True,
                    options=options,
                )
                self.compiled[kind] = fn
                while len(self.compiled) > MAX_KINDS:
                    self.compiled.popitem(last=False)
            else:
                self.compiled.move_to_end(kind)
            return fn


def _fresh_copy(native: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``native`` with a code object of its own (so its own Dynamo cache and
    recompile budget); a bound method stays bound to its object."""
    func = getattr(native, "__func__", native)
    if not isinstance(func, types.FunctionType):
        return native  # a callable object: compiled as it is
    code = func.__code__.replace(co_name=f"{func.__name__}_inductor_{n}")
    copy = types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__,
                              func.__closure__)  # fmt: skip
    copy.__kwdefaults__ = func.__kwdefaults__
    if func is not native:
        return types.MethodType(copy, native.__self__)  # type: ignore[attr-defined]  # a bound method
    return copy


compiled: dict[str, CompiledNative] = {}
"""The compiled natives by op name (for inspection and tests)."""


def register(op: Op) -> CompiledNative:
    """Register the ``inductor`` impl of ``op`` (unconditional, never inplace)."""
    impl = CompiledNative(op)

    def eager(*args: Any) -> Any:
        return impl(*args)

    eager.__signature__ = op.signature  # type: ignore[attr-defined]
    eager.__name__ = f"inductor_{op.name}"
    op.register_impl(PROVIDER, eager=eager)(op.native)
    compiled[op.name] = impl
    return impl


def _serve(op: OpLike) -> None:
    register(cast(Op, op))  # every registered op is an Op (the registry names OpLike)


on_register(_serve)
