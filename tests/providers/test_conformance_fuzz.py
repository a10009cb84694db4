"""Conformance: every op on every provider supported here, through opir's packaged grid.

``test_grid`` runs the whole default grid of :mod:`opir.check` (what ``opir
check PROVIDER`` runs: native values over dtypes and shapes, hostile layouts,
zero rows, bad inputs, maybe_inplace aliasing, fake tracing, opir.compile with
the provider pinned, random cases). ``test_fuzz_against_native`` runs many more
seeded random cases: odd sizes, 0/1 tokens, strided/transposed/offset/
overlapping (expand, as_strided) inputs, 3-D non-collapsible views, mixed dtypes
(weight or gate dtype != x's, weight_bias) and invalid arguments, each through
``op.set_priority([provider])`` (and ``maybe_inplace`` for in-place ops); each
must match native within ``op.tolerance``, or raise the exception type native
raises. ``OPIR_FUZZ_CASES=N`` sets the cases per (op, provider) (default 40);
``OPIR_FUZZ_SEED`` the base seed. The ``inductor`` provider (which compiles)
gets a handful of random cases and no grid, as does an
``opir.compile(..., inductor=False)`` leg.
"""

from __future__ import annotations

import os

import pytest
import torch

import opir
from opir.check import check_provider, random_case
from opir.check.checks import Settings, check_random
from opir.check.compare import assert_close_to

CASES = int(os.environ.get("OPIR_FUZZ_CASES", "40"))
SEED = int(os.environ.get("OPIR_FUZZ_SEED", "1234"))
COMPILING_CASES = 2  # each inductor case compiles (seconds); the grid covers the rest


def _pairs():
    for name, op in sorted(opir.registry.items()):
        for provider, impl in op.impls.items():
            if provider != "native" and impl.supported:
                yield pytest.param(name, provider, id=f"{name}-{provider}")


@pytest.mark.parametrize(("name", "provider"), list(_pairs()))
def test_fuzz_against_native(name, provider):
    op = opir.registry[name]
    cases = COMPILING_CASES if provider == "inductor" else CASES
    outcome = check_random(op, op.impls[provider], Settings(random_cases=cases, seed=SEED))
    assert outcome.status == "pass", (
        f"fuzz case failed: op={name} provider={provider}: {outcome.detail} "
        "(rerun one case: OPIR_FUZZ_SEED=<its seed> OPIR_FUZZ_CASES=1)"
    )


def _grid_providers():
    """Providers supported here, but ``inductor``: it compiles every case (minutes for
    the grid; ``opir check inductor`` runs it), and gets its random cases above."""
    found = {p for op in opir.registry.values() for p, i in op.impls.items() if i.supported}
    return sorted(found - {"native", "inductor"})


@pytest.mark.parametrize("provider", _grid_providers())
def test_grid(provider):
    report = check_provider(provider)
    assert report.ok, "\n".join(f"{o.op}/{o.check}: {o.detail}" for o in report.failures)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(opir.registry))
def test_fuzz_under_opir_compile(name):
    op = opir.registry[name]
    for i in range(COMPILING_CASES):
        seed = SEED + 104729 * i
        args, invalid = random_case(op, seed)
        if invalid:
            continue
        try:
            expected = op.native(*random_case(op, seed)[0])
        except Exception:
            continue
        torch._dynamo.reset()
        compiled = opir.compile(lambda *a: op(*a), options={"inductor": False})
        assert_close_to(op, compiled(*args), expected)
