"""Third-party providers, found through the ``opir.providers`` entry point group.

A plugin package declares, in its pyproject::

    [project.entry-points."opir.providers"]
    myvendor = "myvendor_opir.register"

and that module registers impls with ``op.register_impl`` when imported.
Set ``OPIR_PLUGINS=0`` to load none (e.g. to rule a plugin out while debugging).

A plugin that fails to import is logged as an error on the ``opir`` logger
(with its traceback at DEBUG level) and skipped, as vLLM does: one broken
third-party package must not make ``import opir`` fail. ``failed_plugins()``
lists what was skipped and why.
"""

from __future__ import annotations

import importlib.metadata
import os

from opir.core.log import get_logger

GROUP = "opir.providers"
_log = get_logger(__name__)
_failed: dict[str, str] = {}


def failed_plugins() -> dict[str, str]:
    """Plugins skipped because they failed to load: entry point name -> the error."""
    return dict(_failed)


def load_plugins() -> list[str]:
    """Import every installed plugin; return their entry point names."""
    if os.environ.get("OPIR_PLUGINS", "1") == "0":
        return []
    loaded = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as e:
            _failed[ep.name] = f"{type(e).__name__}: {e}"
            _log.error(
                "plugin '%s' (%s) failed to load and is skipped: %s: %s. Fix or uninstall it, "
                "or set OPIR_PLUGINS=0 to skip all plugins.",
                ep.name,
                ep.value,
                type(e).__name__,
                e,
            )
            _log.debug("traceback of plugin '%s'", ep.name, exc_info=True)
            continue
        loaded.append(ep.name)
    return loaded
