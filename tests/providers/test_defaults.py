"""The measured default tables name only ops and providers that exist."""

from __future__ import annotations

import pytest

import opir
from opir.providers import defaults

TABLES = {
    "CPU_EAGER": defaults.CPU_EAGER,
    "CPU_COMPILE": defaults.CPU_COMPILE,
    "GPU_EAGER": defaults.GPU_EAGER,
    "GPU_COMPILE": defaults.GPU_COMPILE,
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_default_names_a_registered_impl(name):
    # A GPU table is only installed on a GPU machine: a typo there would surface only
    # there, as a PriorityError at import. Check every table here.
    for op_name, providers in TABLES[name].items():
        assert op_name in opir.registry, f"{name}: unknown op {op_name!r}"
        impls = opir.registry[op_name].impls
        missing = [p for p in providers if p not in impls]
        assert not missing, f"{name}[{op_name!r}]: no impl from {missing}"
        assert providers[-1] == "native", f"{name}[{op_name!r}] must end with native"
