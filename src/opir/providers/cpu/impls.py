"""The ``cpu`` provider's predicates and impls, registered on the norm ops.

Eager calls go straight to the launchers of ``kernels.py`` (pybind, about
1 µs per call); while a dispatch mode is active (make_fx, FakeTensor, export)
the impls call the custom ops ``torch.ops.opir_cpu.*`` instead, which cost
~2.5 µs more but appear as graph nodes. A failing build follows the kit's
load-failure policy (``providers/kit.py``): ``ProviderBuildError`` when the
user asked for ``cpu``, otherwise one warning and the next provider.
"""

from __future__ import annotations

import importlib

import torch

import opir.providers.cpu.build as build
from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated
from opir.providers.cpu.availability import REASON, SUPPORTED
from opir.providers.kit import Provider


def family_provider(kernels: str) -> Provider:
    """The ``cpu`` Provider of one C++ source family: it loads ``kernels`` (a module
    name) and returns its ``load()``, which builds that family's extension alone.

    Every family is the same 'cpu' provider to users and priorities, but a Provider
    instance of its own: a family is built on its own first call (the first
    rms_norm never waits for the activations' build, nor the reverse), and a
    failed build withdraws only the ops of that family.
    """
    return Provider(
        "cpu",
        namespace="opir_cpu",
        availability=(SUPPORTED, REASON),
        load=lambda: importlib.import_module(kernels).load(),
        load_errors=(build.ProviderBuildError,),
    )


PROVIDER = family_provider("opir.providers.cpu.kernels")

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Predicates say only what the kernels cannot do; they are on the dispatch hot
# path, so each reads as few tensor attributes as possible. The checks are
# written out in each predicate rather than shared through helper functions:
# a Python call costs ~80 ns here, a quarter of the predicate.


def supports_rms_norm(
    x, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


def supports_fused_add_rms_norm(
    x, x_residual, weight, epsilon, variance_size=None, weight_bias=0.0, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if x_residual.dtype is not dtype or not (
        x_residual.is_contiguous() or x_residual.stride(-1) == 1
    ):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


def supports_rms_norm_gated(
    x, gate, weight, epsilon, group_size=None, norm_before_gate=False, fp32_multiply=False
) -> bool:
    dtype = x.dtype
    if dtype not in _DTYPES or not x.is_cpu or not (x.is_contiguous() or x.stride(-1) == 1):
        return False
    if gate is not None and (
        gate.dtype not in _DTYPES or not (gate.is_contiguous() or gate.stride(-1) == 1)
    ):
        return False
    return weight is None or weight.dtype is dtype or weight.dtype in _DTYPES


PROVIDER.register(rms_norm, supports_rms_norm)
# the launcher detects overlap and runs on private copies
PROVIDER.register(fused_add_rms_norm, supports_fused_add_rms_norm, inplace=True, aliasing_safe=True)
PROVIDER.register(rms_norm_gated, supports_rms_norm_gated)


def extension():
    """The pybind module of the kernels, after building/loading it once."""
    return importlib.import_module("opir.providers.cpu.kernels").extension()
