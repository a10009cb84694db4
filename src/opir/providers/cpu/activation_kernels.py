"""The cpu activation kernels (``activations.cpp``): launchers and ``torch.ops.opir_cpu.*``.

The second source family of the cpu provider, laid out like ``kernels.py``
(the norms): the custom ops (the activation ops' own schemas and fakes, see
``kit.define``) are defined when ``opir.providers.cpu`` is imported, before
any C++ is built, and build or load the extension on their first call, so
code Inductor cached in an earlier process works in a fresh one. ``load()``
(what ``activation_impls.PROVIDER`` loads) builds the extension and returns
the launchers by op name: the pybind functions themselves, which eager calls
run without a wrapper frame, except where a pybind TypeError must become the
error native raises (``typed``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import opir.providers.cpu.build as build
from opir.core.op import Op
from opir.ops import activations as ops
from opir.ops.activations import check_approximate
from opir.providers.cpu.kernels import NAMESPACE, typed
from opir.providers.kit import define

FAMILY = "activations"
"""The kernel source family (``activations.cpp``, built as its own extension)."""

OPS = (
    ops.silu_and_mul,
    ops.mul_and_silu,
    ops.gelu_and_mul,
    ops.fatrelu_and_mul,
    ops.gelu_and_mul_sparse,
    ops.swigluoai_and_mul,
    ops.silu_mul,
    ops.gelu_mul,
)
"""The ops with a kernel (a pybind function of the op's name) in ``activations.cpp``."""

# A non-str ``approximate`` fails pybind's conversion; native raises the op's ValueError.
_CHECKS = {"approximate": check_approximate}


def extension() -> Any:
    """The pybind module of the activation kernels, after building/loading it once."""
    return build.load(FAMILY)  # the one call into the build (it caches the module)


def load() -> types.SimpleNamespace:
    """The eager launchers by op name (builds the extension; ``ProviderBuildError`` if
    that fails)."""
    ext = extension()
    return types.SimpleNamespace(**{op.name: _launcher(getattr(ext, op.name), op) for op in OPS})


def _launcher(fn: Callable[..., Any], op: Op) -> Callable[..., Any]:
    # x (or gate, up) alone: the predicate already read them as tensors, so pybind
    # cannot refuse them with a TypeError; the pybind function is the launcher.
    if len(op.sig.tensor_positions) == len(op.sig.names):
        return fn
    return typed(fn, op, _CHECKS)


def _calling(name: str) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        return getattr(extension(), name)(*args)

    return run


for _op in OPS:
    define(NAMESPACE, _op, _calling(_op.name), device_types="cpu")
del _op
