"""Shared fixtures: throwaway ops and isolation of process-wide priority state."""

from __future__ import annotations

import itertools

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
