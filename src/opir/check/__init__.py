"""The conformance grid: check a provider's impls against each op's native function.

``opir check PROVIDER`` runs it from the command line; :func:`check_provider`
from Python. The checks (see :data:`CHECKS` and docs/writing-a-provider.md):
``native`` values over dtypes and shapes, hostile ``layouts``, ``zero_rows``,
``bad_inputs``, the ``inplace``/aliasing rules of ``maybe_inplace``, ``fake``
tracing, ``compile`` with the provider pinned, and seeded ``random`` cases.
The helpers below are what opir's own provider tests build on.
"""

from opir.check.cases import Case, clone_args, describe, random_case
from opir.check.checks import CHECKS, Check, Settings
from opir.check.compare import (
    accepts,
    assert_close_to,
    assert_matches_native,
    assert_untouched,
    run_provider,
)
from opir.check.layouts import LAYOUTS, non_collapsible_3d, relayout, strided_rows
from opir.check.report import Outcome, Report
from opir.check.runner import CheckError, check_provider, ops_of, providers

__all__ = [
    "CHECKS",
    "LAYOUTS",
    "Case",
    "Check",
    "CheckError",
    "Outcome",
    "Report",
    "Settings",
    "accepts",
    "assert_close_to",
    "assert_matches_native",
    "assert_untouched",
    "check_provider",
    "clone_args",
    "describe",
    "non_collapsible_3d",
    "ops_of",
    "providers",
    "random_case",
    "relayout",
    "run_provider",
    "strided_rows",
]
