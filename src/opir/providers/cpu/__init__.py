"""The ``cpu`` provider: hand-written C++ kernels (ATen Vectorized, parallel over rows).

Laid out like every provider (see ``opir.providers``): ``availability.py``
(whether it runs here, and why not), ``kernels.py`` (launchers and the custom
ops ``torch.ops.opir_cpu.*`` with their fakes), ``impls.py`` (the predicates and
registrations; ``PROVIDER`` is the kit's :class:`~opir.providers.kit.Provider`).
The C++ (``norms.cpp``, ``activations.cpp``, ``quant.cpp``: one file per op family, each its
own extension) is compiled at the family's first call (see ``build.py``), never
at import; the custom ops are defined at import so that code Inductor cached in
an earlier process finds them. The activation family is laid out the same way in
``activation_kernels.py`` and ``activation_impls.py`` (its own ``PROVIDER``, so
that each family loads alone; see there), the int8 quantization family in
``quant_kernels.py`` and ``quant_impls.py``.

What the norm kernels cover (anything else is rejected by ``supports_args`` and
falls through to the next provider): CPU tensors; x in fp32, bf16 or fp16; a
weight of any of those dtypes (one that differs from x's multiplies in fp32,
as type promotion does), with or without ``weight_bias``; a gate that is
absent or of any of those dtypes; the last dim contiguous (leading dims may
have any strides, nothing is copied); any number of rows, including zero.
Inputs that are invalid for every provider (wrong weight length or device,
residual of another shape, variance_size or group_size out of range) are
accepted by the predicates and rejected by the kernels' own checks with a
clear message. The in-place kernel detects overlapping outputs itself and the
launcher then runs it on private copies (see ``kernels.py``).
"""

from __future__ import annotations

import opir.providers.cpu.activation_impls  # the activation family: its impls
import opir.providers.cpu.activation_kernels  # and its torch.ops.opir_cpu.*
import opir.providers.cpu.kernels  # defines torch.ops.opir_cpu.* of the norms
import opir.providers.cpu.quant_impls  # the int8 quant family: its impls
import opir.providers.cpu.quant_kernels  # and its torch.ops.opir_cpu.*
import opir.providers.cpu.scaled_mm  # noqa: F401  (opir_cpu::scaled_mm)
from opir.providers.cpu.availability import REASON, SUPPORTED
from opir.providers.cpu.impls import (
    PROVIDER,
    extension,
    supports_fused_add_rms_norm,
    supports_rms_norm,
    supports_rms_norm_gated,
)

__all__ = [
    "PROVIDER",
    "REASON",
    "SUPPORTED",
    "extension",
    "supports_fused_add_rms_norm",
    "supports_rms_norm",
    "supports_rms_norm_gated",
]
