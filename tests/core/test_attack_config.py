"""Hostile-user tests: priority configuration forms and compile-cache staleness.

Each test with an "Expected ... Actual ..." docstring is the regression test of
a bug found by attacking opir from outside; "Actual" is what it did before
the fix.
"""

from __future__ import annotations

import pytest
import torch

import opir
from opir.core.config import parse_env, resolve_config


def _scale(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return x * alpha


@pytest.fixture
def op(make_op):
    op = make_op(_scale)

    @op.register_impl("mine")
    def mine(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        return x * alpha

    return op


def test_platform_defaults_given_a_string(op):
    """``opir.set_platform_defaults({op: "mine"})`` (a string, not a list).

    Expected: PriorityError like ``op.set_default("mine")`` gives, or the
    priority ['mine']. Actual: stored as ('m','i','n','e'); every name is
    skipped as unregistered and the op silently stays on ['native']
    (registry.set_platform_defaults does ``tuple(providers)`` unchecked).
    """
    try:
        opir.set_platform_defaults({op.name: "mine"})
    except opir.PriorityError:
        return
    assert op.get_priority() == ["mine"]


def test_platform_defaults_with_an_unknown_mode(op):
    """Expected: an OpirError naming the valid modes ('eager', 'compile').
    Actual: ``KeyError: 'Eager'`` from registry._platform_defaults[mode]."""
    with pytest.raises(opir.OpirError, match="compile"):
        opir.set_platform_defaults({op.name: ["mine"]}, mode="Eager")


@pytest.mark.parametrize("form", ["compact", "json"])
def test_opir_priority_naming_an_op_twice(op, form):
    """``OPIR_PRIORITY="op=mine;op=native"`` (or JSON with a duplicate key).

    Expected: PriorityError (a contradictory configuration; every other form
    of mistake is refused, see the module docstring of core/config.py).
    Actual: the first entry is dropped silently (config.parse_env assigns
    ``config[name] = listed``; json.loads keeps the last key).
    """
    value = (
        f"{op.name}=mine;{op.name}=native"
        if form == "compact"
        else f'{{"{op.name}": ["mine"], "{op.name}": ["native"]}}'
    )
    with pytest.raises(opir.PriorityError, match=op.name):
        resolve_config(parse_env(value), "$OPIR_PRIORITY")


@pytest.mark.parametrize("value", ["", "   ", ";", " ; ;"])
def test_opir_priority_empty_forms_change_nothing(value):
    assert resolve_config(parse_env(value), "$OPIR_PRIORITY") == {}


def test_opir_priority_unicode_lookalike_op_is_refused():
    with pytest.raises(opir.PriorityError, match="unknown op"):
        resolve_config(parse_env("\uff52ms_norm=native"), "$OPIR_PRIORITY")


def test_compiled_graph_is_not_relowered_for_unrelated_changes(op, make_op):
    """A model compiled with ``opir.backend``; then an unrelated op is
    registered (the inductor provider registers an impl for it too), and
    ``op.set_default`` is called with the priority it already has.

    Expected: the compiled graph is reused (nothing it lowers changed).
    Actual: each change re-lowers and recompiles the graph and the old
    version is kept forever: Backend.__call__.run in compiler/pipeline.py
    keys ``compiled`` on ``priority_state()`` = (registry.epoch(), ...),
    and registry.bump_epoch runs on every refresh_priority of every op.
    (No Inductor: options inductor=False.)
    """
    from opir.compiler.backend import Backend

    backend = Backend(inductor=False)
    f = torch.compile(lambda x: op(x) + 1, backend=backend)
    x = torch.ones(3)
    f(x)
    lowered = len(backend.report.graphs)
    make_op(_scale)
    op.set_default(list(op.current_priority().user))
    f(x)
    f(x)
    assert len(backend.report.graphs) == lowered
