"""TPNormCase prints its name (an IntEnum would print a bare number) and stays an int."""

from opir.layers import Mixer2RMSNormGated, TPNormCase


def test_tp_case_prints_its_name_and_compares_as_its_number() -> None:
    case = Mixer2RMSNormGated(8, 4, tp_size=2, tp_rank=1).tp_case
    assert str(case) == f"{case}" == "TPNormCase.LOCAL_GROUPS"
    assert f"{case:>25}" == "  TPNormCase.LOCAL_GROUPS"
    assert case == 4 and int(case) == 4 and case is TPNormCase(4)
