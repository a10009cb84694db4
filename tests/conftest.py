"""Shared fixtures: throwaway ops and isolation of process-wide priority state."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opir
from opir.core import registry as _registry

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _restore_priorities():
    """Tests may set process defaults or platform defaults; undo both."""
    saved_user = {name: op._user_priority for name, op in opir.registry.items()}
    saved_platform = _registry.snapshot_platform_defaults()
    yield
    for name, op in list(opir.registry.items()):
        if name in saved_user:
            op._user_priority = saved_user[name]
    _registry.restore_platform_defaults(saved_platform)


@pytest.fixture
def make_op():
    """``make_op(fn, **register_op_kwargs)`` registers a uniquely named op, dropped after."""
    made: list[opir.Op] = []

    def make(fn, **kwargs) -> opir.Op:
        kwargs.setdefault("name", f"test_{fn.__name__}_{next(_counter)}")
        op = opir.register_op(**kwargs)(fn)
        made.append(op)
        return op

    yield make
    for op in made:
        op.drop()


def scale(x: torch.Tensor, weight: torch.Tensor | None, alpha: float = 2.0) -> torch.Tensor:
    """A small reference op used across the core tests: x * alpha (* weight)."""
    y = x * alpha
    return y if weight is None else y * weight


def add_scale(
    x: torch.Tensor, x_other: torch.Tensor, alpha: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An allow_inplace reference op: (x + x_other, (x + x_other) * alpha)."""
    s = x + x_other
    return s, s * alpha


@pytest.fixture
def scale_op(make_op):
    return make_op(scale)


@pytest.fixture
def add_scale_op(make_op):
    return make_op(add_scale, allow_inplace=True)


_PREBUILD_MIN_TESTS = 500


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a whole-suite run, build the cpu provider's C++ families in one background
    process while the first tests run.

    Each family is one compiler job of 30-60 s, and the tests that first need one would
    otherwise wait for it in turn; pytest keeps one core busy, so on a 2-core machine the
    builds overlap with tests instead. The build lock makes a test that needs a family
    still being built wait for it, and a build cut short is redone on first use.
    """
    if len(session.items) < _PREBUILD_MIN_TESTS or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a few files, or `make test`'s workers, which keep both cores busy already
    _start_interpreter_runs(session)
    from opir.providers.cpu import build
    from opir.providers.cpu.availability import SUPPORTED

    if not SUPPORTED:
        return
    order = ["activations", "quant", "rotary"]  # the first tests build "norms" themselves
    families = [f for f in order if f in build.families()]
    code = "import sys, opir.providers.cpu.build as b\nfor f in sys.argv[1:]: b.load(f)"
    session.config._opir_prebuild = subprocess.Popen(  # type: ignore[attr-defined]
        [sys.executable, "-c", code, *families],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    proc = getattr(session.config, "_opir_prebuild", None)
    if proc is None:
        return
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_interpreter_runs(session: pytest.Session) -> None:
    """Start the triton files' interpreter runs (tests/providers/interpreter.py)."""
    files = {
        str(item.path)
        for item in session.items
        if item.name == "test_kernels_in_the_triton_interpreter"
    }
    if not files:
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        return  # the tests skip with their reason
    sys.path.insert(0, str(Path(__file__).parent / "providers"))
    from interpreter import start

    for path in sorted(files):
        start(path)
