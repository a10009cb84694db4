"""``torch.ops.opir_cpu.*``: the kernels as torch custom ops, defined from Python.

The schemas, fake (meta) functions and CPU implementations are registered when
``opir.providers.cpu`` is imported, before any C++ is built or loaded. Code
that Inductor cached in an earlier process calls ``torch.ops.opir_cpu.*``
directly; the CPU implementations here load (building if needed) the
extension on first use and call its pybind functions, so such code works in a
fresh process. Eager dispatch does not come through here (see ``impls.py``).
"""

from __future__ import annotations

import torch

import opir.providers.cpu.build as build

LIBRARY = torch.library.Library("opir_cpu", "DEF")
LIBRARY.define(
    "rms_norm(Tensor x, Tensor? weight, float epsilon, SymInt? variance_size, "
    "float weight_bias=0.0, bool fp32_multiply=False) -> Tensor"
)
LIBRARY.define(
    "fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor? weight, float epsilon, "
    "SymInt? variance_size, float weight_bias=0.0, bool fp32_multiply=False) -> ()"
)
LIBRARY.define(
    "rms_norm_gated(Tensor x, Tensor? gate, Tensor? weight, float epsilon, SymInt? group_size, "
    "bool norm_before_gate, bool fp32_multiply=False) -> Tensor"
)


def _rms_norm(x, weight, epsilon, variance_size, weight_bias=0.0, fp32_multiply=False):
    return build.load().rms_norm(x, weight, epsilon, variance_size, weight_bias, fp32_multiply)


def _fused_add_rms_norm_(
    x, residual, weight, epsilon, variance_size, weight_bias=0.0, fp32_multiply=False
):
    ext = build.load()
    args = (weight, epsilon, variance_size, weight_bias, fp32_multiply)
    if not ext.fused_add_rms_norm_(x, residual, *args):
        raise ValueError(
            "opir_cpu::fused_add_rms_norm_: x and residual alias or overlap (or x's rows "
            "overlap each other), so they cannot be written in place; pass separate, "
            "non-overlapping tensors (e.g. .clone()) or call the functional fused_add_rms_norm"
        )


def _rms_norm_gated(x, gate, weight, epsilon, group_size, norm_before_gate, fp32_multiply=False):
    args = (x, gate, weight, epsilon, group_size, norm_before_gate, fp32_multiply)
    return build.load().rms_norm_gated(*args)


LIBRARY.impl("rms_norm", _rms_norm, "CPU")
LIBRARY.impl("fused_add_rms_norm_", _fused_add_rms_norm_, "CPU")
LIBRARY.impl("rms_norm_gated", _rms_norm_gated, "CPU")


@torch.library.register_fake("opir_cpu::rms_norm", lib=LIBRARY)
def _rms_norm_fake(x, weight, epsilon, variance_size, weight_bias=0.0, fp32_multiply=False):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("opir_cpu::fused_add_rms_norm_", lib=LIBRARY)
def _fused_add_fake(
    x, residual, weight, epsilon, variance_size, weight_bias=0.0, fp32_multiply=False
):
    return None


@torch.library.register_fake("opir_cpu::rms_norm_gated", lib=LIBRARY)
def _gated_fake(x, gate, weight, epsilon, group_size, norm_before_gate, fp32_multiply=False):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
