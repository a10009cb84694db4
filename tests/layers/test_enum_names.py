"""Every enum opir defines prints its name, never a bare number."""

from __future__ import annotations

import enum
import importlib
import pkgutil

import opir
from opir.layers.tp import TPNormCase

_OPTIONAL = {"flashinfer", "transformers", "matplotlib", "triton"}


def _opir_enums() -> list[type[enum.Enum]]:
    found = []
    for info in pkgutil.walk_packages(opir.__path__, "opir."):
        if info.name.startswith(("opir.cli", "opir.__main__")):
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            if e.name in _OPTIONAL:
                continue  # imports an optional dependency that is not installed here
            raise
        for value in vars(module).values():
            is_enum = isinstance(value, type) and issubclass(value, enum.Enum)
            if is_enum and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_tp_case_prints_its_name():
    case = TPNormCase.choose(n_groups=4, tp_size=2)
    assert str(case) == "TPNormCase.LOCAL_GROUPS"
    assert f"{case}" == "TPNormCase.LOCAL_GROUPS" and f"{case:>25}".strip() == str(case)
    assert case == 4  # still an int for code that compares with DESIGN's case numbers


def test_every_opir_enum_prints_names():
    enums = _opir_enums()
    assert TPNormCase in enums
    for cls in enums:
        for member in cls:
            assert member.name in str(member) and member.name in f"{member}", (cls, member)
