"""opir's logger: one named ``opir`` logger for builds, fallbacks and skipped providers.

Modules log through ``get_logger(__name__)`` (a child of ``opir``), never ``print``.

Like vLLM, opir configures its own logger by default so that what a user must
see (a C++ build that takes a minute, a provider withdrawn) reaches stderr
without any set-up: one handler on ``opir`` at level ``OPIR_LOG_LEVEL``
(default ``INFO``), messages prefixed ``opir:``, not propagated to the root
logger (so nothing prints twice). An application that configures logging
itself sets ``OPIR_CONFIGURE_LOGGING=0``: opir then adds no handler and its
records propagate to the application's handlers like any library's.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "opir"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _level() -> int:
    raw = os.environ.get("OPIR_LOG_LEVEL", "INFO").strip().upper()
    if raw not in _LEVELS:
        raise ValueError(
            f"OPIR_LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {raw!r}; unset it for INFO."
        )
    return getattr(logging, raw)


def configure() -> logging.Logger:
    """Give the ``opir`` logger its stderr handler unless ``OPIR_CONFIGURE_LOGGING=0``.

    Idempotent; called when this module is imported.
    """
    logger = logging.getLogger(ROOT)
    if os.environ.get("OPIR_CONFIGURE_LOGGING", "1") == "0":
        return logger
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("opir: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(_level())
    logger.propagate = False
    return logger


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger for ``name`` (a module's ``__name__`` under ``opir``, or ``opir`` itself)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"opir loggers live under {ROOT!r}; got {name!r}")
    return logging.getLogger(name)


configure()
