"""Numerics metadata of an op: per-dtype tolerances and an input generator.

Tests and benchmarks use them to compare every provider with the native
function on inputs the op's author chose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from opir.core.tolerances import Tolerance, default_tolerance


class NumericsMixin:
    """What ``Op`` offers for checking impls against the native function."""

    name: str
    _tolerances: dict[torch.dtype, Tolerance]
    _input_generator: Callable[..., tuple] | None

    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        """(atol, rtol) an impl must meet against native for outputs of ``dtype``.

        Example: ``torch.testing.assert_close(got, want, **rms_norm.tolerance(x.dtype)._asdict())``
        """
        return self._tolerances.get(dtype) or default_tolerance(dtype)

    def override_tolerance(self, dtype: torch.dtype, *, atol: float, rtol: float) -> None:
        """Set this op's tolerance for ``dtype`` (e.g. when the contract rounds twice).

        Example: ``my_op.override_tolerance(torch.float16, atol=1e-3, rtol=2e-3)``
        """
        self._tolerances[dtype] = Tolerance(atol, rtol)

    def register_input_generator(self, fn: Callable[..., tuple]) -> Callable[..., tuple]:
        """Declare ``fn(*, dtype, device, generator, **shape) -> args`` for tests/benchmarks.

        Example::

            @my_op.register_input_generator
            def _(*, dtype, device, generator, num_tokens=4, hidden_size=64):
                x = torch.randn(num_tokens, hidden_size, generator=generator, device=device)
                return (x.to(dtype), 2.0)
        """
        self._input_generator = fn
        return fn

    def sample_inputs(
        self,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **shape: Any,
    ) -> tuple:
        """Arguments for one call, made by the op's input generator.

        Example: ``opir.ops.rms_norm.sample_inputs(dtype=torch.bfloat16, num_tokens=8)``
        """
        if self._input_generator is None:
            raise NotImplementedError(
                f"op '{self.name}' has no input generator; add one with "
                f"@{self.name}.register_input_generator"
            )
        generator = torch.Generator(device=device).manual_seed(seed)
        return self._input_generator(dtype=dtype, device=device, generator=generator, **shape)
