"""Kernel providers. Importing this package registers the built-in ones.

Every provider package has the same layout, written with the provider kit
(``kit.py``; how to write one: docs/providers.md):

- ``availability.py``: ``SUPPORTED`` and ``REASON``, whether the provider can
  run on this machine and why not. Cheap; imports no kernel library.
- ``kernels.py``: the launchers, by op name, and the provider's custom ops
  (``torch.ops.opir_<provider>.*``, defined with the ops' own schemas and
  fakes by ``kit.define``). Loaded on the first call, never at ``import opir``
  (cpu's defines its custom ops at import and builds its C++ on first use).
- ``impls.py``: ``PROVIDER`` (a :class:`~opir.providers.kit.Provider`), the
  ``supports_args`` predicates, and one ``PROVIDER.register(op, ...)`` per impl.
- ``__init__.py``: what the kernels cover, and the names above re-exported.

``PROVIDER.kernels()`` is the one accessor for the loaded kernels; a load
failure follows the kit's one policy (withdraw with the reason; fall back with
one warning unless the user asked for the provider). Kernel sources are one
file per op family; a family may have its own ``<family>_kernels.py`` and
``<family>_impls.py`` (cpu's activations: each C++ family is built on its own
first call, so it has its own ``Provider`` instance of the same provider).
``inductor`` compiles each op's native function and needs
none of this; ``defaults`` installs the measured platform priorities.
"""

from opir.providers import cpu, defaults, flashinfer, inductor, triton

defaults.apply()

__all__ = ["cpu", "defaults", "flashinfer", "inductor", "triton"]
