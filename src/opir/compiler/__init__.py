"""torch.compile integration: backend, passes and the compile report.

Modules, one job each: ``backend`` (``opir.backend``, ``opir.compile``),
``options``, ``passes`` (the pass sequence and where it runs), ``cache``
(what makes a compiled graph stale), ``report``, ``fx_utils``, and the passes
``donation``, ``fusion`` (engine) + ``fusion_rules`` (the rules, as data),
``lowering`` (+ ``workarounds``) and ``clones``.

The backend imports Inductor (about a second); it is loaded on first use so
that ``import opir`` stays cheap for eager-only users.
"""

from __future__ import annotations

from typing import Any

from opir.compiler.donation import DonationError

_LAZY = {
    "Backend": "backend",
    "report_of": "backend",
    "CompileReport": "report",
    "GraphReport": "report",
    "Options": "options",
}


def backend(**options: Any):
    """A backend for ``torch.compile``; see :func:`opir.compiler.backend.backend`.

    Example: ``torch.compile(model, backend=opir.backend(inductor=False))``
    """
    from opir.compiler.backend import backend as make_backend

    return make_backend(**options)


def compile(
    model: Any = None, *, options: dict[str, Any] | None = None, **torch_compile_kwargs: Any
):
    """``torch.compile`` with opir's passes; see :func:`opir.compiler.backend.compile`.

    Example: ``compiled = opir.compile(model); compiled(x); print(compiled.opir_report)``
    """
    from opir.compiler.backend import compile as compile_with_opir

    return compile_with_opir(model, options=options, **torch_compile_kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"opir.compiler.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'opir.compiler' has no attribute '{name}'")


__all__ = [
    "Backend", "CompileReport", "DonationError", "GraphReport", "Options", "backend", "compile",
    "report_of",
]  # fmt: skip
