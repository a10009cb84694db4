"""torch.compile integration: backend, passes and the compile report.

The pipeline imports Inductor (about a second); it is loaded on first use so
that ``import opir`` stays cheap for eager-only users.
"""

from __future__ import annotations

from typing import Any

from opir.compiler.donation import DonationError

_LAZY = ("Backend", "CompileReport", "GraphReport")


def backend(**options: Any):
    """A backend for ``torch.compile``; see :func:`opir.compiler.pipeline.backend`."""
    from opir.compiler.pipeline import backend as make_backend

    return make_backend(**options)


def compile(
    model: Any = None, *, options: dict[str, Any] | None = None, **torch_compile_kwargs: Any
):
    """``torch.compile`` with opir's passes; see :func:`opir.compiler.pipeline.compile`."""
    from opir.compiler.pipeline import compile as compile_with_opir

    return compile_with_opir(model, options=options, **torch_compile_kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from opir.compiler import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'opir.compiler' has no attribute '{name}'")


__all__ = ["Backend", "CompileReport", "DonationError", "GraphReport", "backend", "compile"]
