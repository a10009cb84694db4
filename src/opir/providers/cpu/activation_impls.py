"""The ``cpu`` provider's activation kernels (``activations.cpp``): build, custom ops, impls.

Everything the activation family needs from the provider is in this one file (the
provider kit will port it): the build of ``activations.cpp`` as its own
extension, the torch custom ops ``torch.ops.opir_cpu.<op>`` with their fakes,
and the impls registered on the ops. Eager calls go straight to the pybind
functions; under a dispatch mode (make_fx, FakeTensor, export) the impls call
the custom ops instead, which appear as graph nodes.

What the kernels cover (anything else is rejected by the predicates and falls
through to the next provider): CPU tensors in fp32, bf16 or fp16 whose last
dim is contiguous (leading dims may have any strides; nothing is copied), any
number of rows including zero. Inputs no provider can run (odd last dim, an
unknown ``approximate``, mismatched gate/up) pass the predicates and are
rejected by the kernels with the same ValueError the native ops raise.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

import opir.providers.cpu.build as build
import opir.providers.cpu.ops  # noqa: F401  (owns the opir_cpu namespace; define it first)
from opir.core.cache_dir import CacheDirError, secure_dir
from opir.core.platform import cache_root
from opir.ops.activations import (
    fatrelu_and_mul,
    gelu_and_mul,
    gelu_and_mul_sparse,
    gelu_mul,
    mul_and_silu,
    silu_and_mul,
    silu_mul,
    swigluoai_and_mul,
)
from opir.providers.cpu.availability import REASON, SUPPORTED
from opir.providers.cpu.lock import build_lock

SOURCE = Path(__file__).with_name("activations.cpp")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OPS = (
    silu_and_mul,
    mul_and_silu,
    gelu_and_mul,
    fatrelu_and_mul,
    gelu_and_mul_sparse,
    swigluoai_and_mul,
    silu_mul,
    gelu_mul,
)

# ---------------------------------------------------------------------------
# Build. TODO(lead): replace _build_extension with build.load("activations") after
# the pkg merge; this is the same machinery (build.cflags(), the private cache
# dir, the build lock) without the manifest check.

_build_lock = threading.Lock()
_extension: ModuleType | None = None
_failure: build.ProviderBuildError | None = None
_withdrawn = False


def _build_extension() -> ModuleType:
    from torch.utils import cpp_extension

    digest = hashlib.sha256(SOURCE.read_bytes() + build.build_key().encode())
    key = digest.hexdigest()[:16]
    try:
        secure_dir(cache_root())
        directory = secure_dir(cache_root() / f"cpu-activations-{key}")
    except CacheDirError as e:
        raise build.ProviderBuildError(
            f"opir's 'cpu' provider has no usable cache directory: {e}"
        ) from e
    with build_lock(directory / "build.lock"):
        try:
            return cpp_extension.load(
                name=f"opir_cpu_activations_{key}",
                sources=[str(SOURCE)],
                build_directory=str(directory),
                extra_cflags=build.cflags(),
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as e:
            raise build.ProviderBuildError(
                f"building opir's 'cpu' activation kernels failed:\n{e}\n\nTo run without "
                "them, choose another provider, e.g. OPIR_PRIORITY='silu_and_mul=native' "
                "or opir.set_priority({...}); `opir info` lists providers."
            ) from e


def extension() -> ModuleType:
    """The pybind module of the activation kernels, after building/loading it once."""
    global _extension, _failure
    if _extension is not None:
        return _extension
    with _build_lock:
        if _failure is not None:
            raise _failure
        if _extension is None:
            try:
                _extension = _build_extension()
            except build.ProviderBuildError as e:
                _failure = e
                raise
    return _extension


def _loaded_or_fallback(op):
    """The extension, or (when the build failed and the user did not ask ``op`` for
    ``cpu``) None after withdrawing ``cpu`` with one warning; the caller re-runs ``op``."""
    global _withdrawn
    try:
        return extension()
    except build.ProviderBuildError as e:
        if op.explicitly_requested("cpu"):
            raise
        if not _withdrawn:
            _withdrawn = True
            warnings.warn(
                f"opir: the 'cpu' activation kernels are unavailable, using the next "
                f"provider instead.\n{e}",
                RuntimeWarning,
                stacklevel=4,
            )
        for o in _OPS:
            if not o.explicitly_requested("cpu"):
                o.withdraw_impl("cpu", f"its C++ build failed: {str(e).splitlines()[0]}")
        return None


def _argument_error(op: str, error: TypeError, **scalars) -> Exception:
    """Turn pybind's "incompatible function arguments" into a message naming the argument."""
    for name, value in scalars.items():
        if name == "approximate":
            if not isinstance(value, str):
                return ValueError(
                    f"{op}: approximate must be one of ('none', 'tanh'), got {value!r}"
                )
        elif isinstance(value, bool) or not isinstance(value, (float, int)):
            return TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    return error


# ---------------------------------------------------------------------------
# torch.ops.opir_cpu.<op>: schemas, CPU implementations (through the pybind
# functions, building on first use) and fakes. ops.py owns the namespace ("DEF");
# this file adds to it.

LIBRARY = torch.library.Library("opir_cpu", "FRAGMENT")
_SCHEMAS = {
    "silu_and_mul": "(Tensor x) -> Tensor",
    "mul_and_silu": "(Tensor x) -> Tensor",
    "gelu_and_mul": "(Tensor x, str approximate='none') -> Tensor",
    "fatrelu_and_mul": "(Tensor x, float threshold=0.0) -> Tensor",
    "gelu_and_mul_sparse": "(Tensor x, float std_multiplier, str approximate='none') -> Tensor",
    "swigluoai_and_mul": "(Tensor x, float alpha=1.702, float limit=7.0) -> Tensor",
    "silu_mul": "(Tensor gate, Tensor up) -> Tensor",
    "gelu_mul": "(Tensor gate, Tensor up, str approximate='none') -> Tensor",
}


# The dispatcher leaves out trailing arguments equal to their schema defaults, so
# each implementation restates the defaults.
_CPU = {
    "silu_and_mul": lambda x: extension().silu_and_mul(x),
    "mul_and_silu": lambda x: extension().mul_and_silu(x),
    "gelu_and_mul": lambda x, approximate="none": extension().gelu_and_mul(x, approximate),
    "fatrelu_and_mul": lambda x, threshold=0.0: extension().fatrelu_and_mul(x, threshold),
    "gelu_and_mul_sparse": lambda x, std_multiplier, approximate="none": (
        extension().gelu_and_mul_sparse(x, std_multiplier, approximate)
    ),
    "swigluoai_and_mul": lambda x, alpha=1.702, limit=7.0: extension().swigluoai_and_mul(
        x, alpha, limit
    ),
    "silu_mul": lambda gate, up: extension().silu_mul(gate, up),
    "gelu_mul": lambda gate, up, approximate="none": extension().gelu_mul(gate, up, approximate),
}


def _define(name: str, separate: bool) -> None:
    LIBRARY.define(name + _SCHEMAS[name])

    def fake(*args):
        x = args[0]
        if separate:
            return torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.dim() < 1 or x.shape[-1] % 2:
            raise ValueError(f"{name}: x's last dim must be even, got shape {list(x.shape)}")
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))

    LIBRARY.impl(name, _CPU[name], "CPU")
    torch.library.register_fake(f"opir_cpu::{name}", fake, lib=LIBRARY)


for _name in _SCHEMAS:
    _define(_name, separate=_name in ("silu_mul", "gelu_mul"))


# ---------------------------------------------------------------------------
# Predicates: only what the kernels cannot do, reading few attributes (they are on
# the dispatch hot path; the checks are written out rather than shared).


def supports_silu_and_mul(x) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_gelu_and_mul(x, approximate="none") -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_fatrelu_and_mul(x, threshold=0.0) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_gelu_and_mul_sparse(x, std_multiplier, approximate="none") -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_swigluoai_and_mul(x, alpha=1.702, limit=7.0) -> bool:
    return x.dtype in _DTYPES and x.is_cpu and (x.is_contiguous() or x.stride(-1) == 1)


def supports_silu_mul(gate, up) -> bool:
    if gate.dtype not in _DTYPES or not gate.is_cpu:
        return False
    if not (gate.is_contiguous() or gate.stride(-1) == 1):
        return False
    return up.is_contiguous() or up.stride(-1) == 1


def supports_gelu_mul(gate, up, approximate="none") -> bool:
    if gate.dtype not in _DTYPES or not gate.is_cpu:
        return False
    if not (gate.is_contiguous() or gate.stride(-1) == 1):
        return False
    return up.is_contiguous() or up.stride(-1) == 1


# ---------------------------------------------------------------------------
# Impls: an eager function (the pybind call) and a traceable one (the custom op).


def _eager_silu_and_mul(x):
    ext = _extension or _loaded_or_fallback(silu_and_mul)
    if ext is None:
        return silu_and_mul(x)
    return ext.silu_and_mul(x)


@silu_and_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_silu_and_mul,
    eager=_eager_silu_and_mul,
)
def cpu_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.opir_cpu.silu_and_mul.default(x)


def _eager_mul_and_silu(x):
    ext = _extension or _loaded_or_fallback(mul_and_silu)
    if ext is None:
        return mul_and_silu(x)
    return ext.mul_and_silu(x)


@mul_and_silu.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_silu_and_mul,
    eager=_eager_mul_and_silu,
)
def cpu_mul_and_silu(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.opir_cpu.mul_and_silu.default(x)


def _eager_gelu_and_mul(x, approximate="none"):
    ext = _extension or _loaded_or_fallback(gelu_and_mul)
    if ext is None:
        return gelu_and_mul(x, approximate)
    try:
        return ext.gelu_and_mul(x, approximate)
    except TypeError as e:
        raise _argument_error("gelu_and_mul", e, approximate=approximate) from None


@gelu_and_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_gelu_and_mul,
    eager=_eager_gelu_and_mul,
)
def cpu_gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return torch.ops.opir_cpu.gelu_and_mul.default(x, approximate)


def _eager_fatrelu_and_mul(x, threshold=0.0):
    ext = _extension or _loaded_or_fallback(fatrelu_and_mul)
    if ext is None:
        return fatrelu_and_mul(x, threshold)
    try:
        return ext.fatrelu_and_mul(x, threshold)
    except TypeError as e:
        raise _argument_error("fatrelu_and_mul", e, threshold=threshold) from None


@fatrelu_and_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_fatrelu_and_mul,
    eager=_eager_fatrelu_and_mul,
)
def cpu_fatrelu_and_mul(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return torch.ops.opir_cpu.fatrelu_and_mul.default(x, threshold)


def _eager_gelu_and_mul_sparse(x, std_multiplier, approximate="none"):
    ext = _extension or _loaded_or_fallback(gelu_and_mul_sparse)
    if ext is None:
        return gelu_and_mul_sparse(x, std_multiplier, approximate)
    try:
        return ext.gelu_and_mul_sparse(x, std_multiplier, approximate)
    except TypeError as e:
        raise _argument_error(
            "gelu_and_mul_sparse", e, std_multiplier=std_multiplier, approximate=approximate
        ) from None


@gelu_and_mul_sparse.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_gelu_and_mul_sparse,
    eager=_eager_gelu_and_mul_sparse,
)
def cpu_gelu_and_mul_sparse(
    x: torch.Tensor, std_multiplier: float, approximate: str = "none"
) -> torch.Tensor:
    return torch.ops.opir_cpu.gelu_and_mul_sparse.default(x, std_multiplier, approximate)


def _eager_swigluoai_and_mul(x, alpha=1.702, limit=7.0):
    ext = _extension or _loaded_or_fallback(swigluoai_and_mul)
    if ext is None:
        return swigluoai_and_mul(x, alpha, limit)
    try:
        return ext.swigluoai_and_mul(x, alpha, limit)
    except TypeError as e:
        raise _argument_error("swigluoai_and_mul", e, alpha=alpha, limit=limit) from None


@swigluoai_and_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_swigluoai_and_mul,
    eager=_eager_swigluoai_and_mul,
)
def cpu_swigluoai_and_mul(
    x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0
) -> torch.Tensor:
    return torch.ops.opir_cpu.swigluoai_and_mul.default(x, alpha, limit)


def _eager_silu_mul(gate, up):
    ext = _extension or _loaded_or_fallback(silu_mul)
    if ext is None:
        return silu_mul(gate, up)
    return ext.silu_mul(gate, up)


@silu_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_silu_mul,
    eager=_eager_silu_mul,
)
def cpu_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.ops.opir_cpu.silu_mul.default(gate, up)


def _eager_gelu_mul(gate, up, approximate="none"):
    ext = _extension or _loaded_or_fallback(gelu_mul)
    if ext is None:
        return gelu_mul(gate, up, approximate)
    try:
        return ext.gelu_mul(gate, up, approximate)
    except TypeError as e:
        raise _argument_error("gelu_mul", e, approximate=approximate) from None


@gelu_mul.register_impl(
    "cpu",
    supported=SUPPORTED,
    reason=REASON,
    supports_args=supports_gelu_mul,
    eager=_eager_gelu_mul,
)
def cpu_gelu_mul(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return torch.ops.opir_cpu.gelu_mul.default(gate, up, approximate)
