"""The provider tests' helpers, now packaged for third parties in :mod:`opir.check`.

Kept as a module so the provider test files import them as before.
"""

from opir.check import (
    assert_matches_native,
    clone_args,
    non_collapsible_3d,
    run_provider,
    strided_rows,
)

__all__ = [
    "assert_matches_native",
    "clone_args",
    "non_collapsible_3d",
    "run_provider",
    "strided_rows",
]
