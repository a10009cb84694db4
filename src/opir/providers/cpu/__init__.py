"""The ``cpu`` provider: hand-written C++ kernels (ATen Vectorized, parallel over rows).

The kernels are also torch custom ops (``torch.ops.opir_cpu.*``, defined in
``ops.py`` at import) so compile-time lowering can trace them and cached
compiled code can call them in a fresh process. The C++ is compiled at first
call (see ``build.py``), never at import.

What the kernels cover (anything else is rejected by ``supports_args`` and
falls through to the next provider): CPU tensors; x in fp32, bf16 or fp16; a
weight of any of those dtypes (one that differs from x's multiplies in fp32,
as type promotion does), with or without ``weight_bias``; a gate that is
absent or of any of those dtypes; the last dim contiguous (leading dims may
have any strides, nothing is copied); any number of rows, including zero.
Inputs that are invalid for every provider (wrong weight length or device,
residual of another shape, variance_size or group_size out of range) are
accepted by the predicates and rejected by the kernels' own checks with a
clear message. The in-place kernel detects overlapping outputs itself and the
impl then runs on private copies (see ``impls.py``).
"""

from __future__ import annotations

import opir.providers.cpu.activation_impls
import opir.providers.cpu.ops  # noqa: F401  (defines torch.ops.opir_cpu)
from opir.providers.cpu.availability import REASON, SUPPORTED
from opir.providers.cpu.impls import extension, kernels

__all__ = ["SUPPORTED", "REASON", "extension", "kernels"]
