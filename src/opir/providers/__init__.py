"""Kernel providers. Importing this package registers the built-in ones.

Each provider lives in its own subpackage and registers impls with
``op.register_impl`` at import; anything expensive (building C++, compiling)
happens lazily on first use, never at import. ``defaults`` then installs the
measured platform priorities.
"""

from opir.providers import cpu, defaults, flashinfer, inductor, triton

defaults.apply()

__all__ = ["cpu", "defaults", "flashinfer", "inductor", "triton"]
