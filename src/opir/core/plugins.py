"""Third-party providers, found through the ``opir.providers`` entry point group.

A plugin package declares, in its pyproject::

    [project.entry-points."opir.providers"]
    myvendor = "myvendor_opir.register"

and that module registers impls with ``op.register_impl`` when imported.
Set ``OPIR_PLUGINS=0`` to load none (e.g. to rule a plugin out while debugging).
"""

from __future__ import annotations

import importlib.metadata
import os

from opir.core.errors import RegistrationError

GROUP = "opir.providers"


def load_plugins() -> list[str]:
    """Import every installed plugin; return their entry point names."""
    if os.environ.get("OPIR_PLUGINS", "1") == "0":
        return []
    loaded = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as e:
            raise RegistrationError(
                f"opir plugin '{ep.name}' ({ep.value}) failed to load: {type(e).__name__}: {e}. "
                "Fix or uninstall it, or set OPIR_PLUGINS=0 to skip all plugins."
            ) from e
        loaded.append(ep.name)
    return loaded
