"""The cpu rotary kernels (``rotary.cpp``): launchers and ``torch.ops.opir_cpu.*``.

The third source family of the cpu provider, laid out like
``activation_kernels.py``: the custom ops (the rotary ops' own schemas and
fakes, see ``kit.define``; the in-place ones for ``rotary_embedding`` and
``qk_norm_rope``) are defined when ``opir.providers.cpu`` is imported, before
any C++ is built, and build or load the extension on their first call.
``load()`` (what ``rotary_impls.PROVIDER`` loads) builds the extension and
returns the launchers by op name.

A launcher calls the pybind function directly (no torch dispatcher: at one
token the call itself is most of the time). The kernels check their
arguments before they touch memory (positions out of range included); when
one raises, the launcher runs the op's native function, which raises the
native's own ValueError for the same input, so both report the same message.
The in-place kernels write query and key in place when that gives the
native's result (separate tensors, or disjoint column blocks of one qkv
buffer) and otherwise run on private copies, which they return.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import opir.providers.cpu.build as build
from opir.core.op import Op
from opir.ops import rotary as ops
from opir.providers.cpu.kernels import NAMESPACE
from opir.providers.kit import define

FAMILY = "rotary"
"""The kernel source family (``rotary.cpp``, built as its own extension)."""

OPS = (ops.rotary_embedding, ops.qk_norm_rope, ops.rotary_pos_emb, ops.qk_norm_rotary_pos_emb)
"""The ops with a kernel (a pybind function of the op's name) in ``rotary.cpp``."""

INPLACE = (ops.rotary_embedding, ops.qk_norm_rope)
"""The kernels that write the op's activations (query, key) in place."""


def extension() -> Any:
    """The pybind module of the rotary kernels, after building/loading it once."""
    return build.load(FAMILY)  # the one call into the build (it caches the module)


def load() -> types.SimpleNamespace:
    """The eager launchers by op name (builds the extension; ``ProviderBuildError`` if
    that fails)."""
    ext = extension()
    return types.SimpleNamespace(**{op.name: launcher(getattr(ext, op.name), op) for op in OPS})


def launcher(fn: Callable[..., Any], op: Op) -> Callable[..., Any]:
    """``fn`` (a pybind function) whose argument errors are the native's: on a
    ValueError or a pybind TypeError the native runs on the same arguments and raises
    its own error; should it accept them, the kernel's error stands."""

    def launch(*args: Any) -> Any:
        try:
            return fn(*args)
        except (TypeError, ValueError) as e:
            op.native(*args)  # raises the native's error for these arguments
            raise e from None

    launch.__name__ = f"cpu_{op.name}"
    return launch


def _calling(name: str) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        return getattr(extension(), name)(*args)

    return run


def _in_place(op: Op) -> Callable[..., Any]:
    """The custom op's kernel: in place, or an error (a traced in-place op cannot
    return the private copies the eager launcher would)."""
    name = op.name

    def run(*args: Any) -> None:
        out = getattr(extension(), name)(*args)
        if any(o is not args[i] for o, i in zip(out, op.activation_positions, strict=False)):
            raise ValueError(
                f"opir_cpu::{name}_: query and key overlap (or a tensor the op reads shares "
                "their memory), so they cannot be written in place; pass separate, "
                f"non-overlapping tensors (e.g. .clone()) or call the functional {name}"
            )

    return run


for _op in OPS:
    if _op in INPLACE:
        define(NAMESPACE, _op, _in_place(_op), inplace=True, device_types="cpu")
    else:
        define(NAMESPACE, _op, _calling(_op.name), device_types="cpu")
del _op
