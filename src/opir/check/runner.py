"""Check one provider: every op it implements (or the ones asked for), every check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from opir.check.checks import CHECKS, Settings
from opir.check.report import Outcome, Report
from opir.core.registry import ops as registry

if TYPE_CHECKING:
    from opir.core.op import Op


class CheckError(ValueError):
    """``opir check`` was asked about a provider or op that does not exist."""


def providers() -> list[str]:
    """Every provider with at least one registered impl (``native`` is the reference)."""
    found = {p for op in registry.values() for p in op.impls if p != "native"}
    return sorted(found)


def ops_of(provider: str) -> list[str]:
    """The ops ``provider`` has an impl of, by name."""
    return sorted(name for name, op in registry.items() if provider in op.impls)


def resolve(provider: str, ops: Sequence[str] | None = None) -> list[str]:
    """The op names to check; a clear :class:`CheckError` for unknown names."""
    if provider == "native":
        raise CheckError(
            "'native' is the reference every provider is checked against; "
            f"check one of: {', '.join(providers())}"
        )
    if provider not in providers():
        raise CheckError(
            f"unknown provider '{provider}'; registered providers: {', '.join(providers())} "
            "(a plugin's provider appears once its package is installed)"
        )
    mine = ops_of(provider)
    for name in ops or ():
        if name not in registry:
            raise CheckError(f"unknown op '{name}'; ops of '{provider}': {', '.join(mine)}")
        if name not in mine:
            raise CheckError(
                f"provider '{provider}' has no impl of op '{name}'; its ops: {', '.join(mine)}"
            )
    return list(dict.fromkeys(ops)) if ops else mine


def check_provider(
    provider: str,
    ops: Sequence[str] | None = None,
    *,
    full: bool = False,
    random_cases: int | None = None,
    checks: Sequence[str] | None = None,
    on_result: Callable[[Outcome], None] | None = None,
) -> Report:
    """Run every check on ``provider``'s impl of each op in ``ops`` (default: all of them).

    An impl that is not supported here (``supported=False``) has every check
    skipped with its reason. ``full`` runs the big grid (every dtype, shape and
    layout, 40 random cases per op instead of 8). ``checks`` picks checks by
    name (default: all of :data:`~opir.check.checks.CHECKS`).

    Example::

        report = opir.check.check_provider("cpu", ["rms_norm"])
        assert report.ok, report.failures
    """
    names = resolve(provider, ops)
    known = [c.name for c in CHECKS]
    unknown = sorted(set(checks or ()) - set(known))
    if unknown:
        raise CheckError(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(known)}")
    chosen = [c for c in CHECKS if checks is None or c.name in checks]
    settings = Settings(full=full, random_cases=random_cases or (40 if full else 8))
    report = Report(provider)
    for name in names:
        op = cast("Op", registry[name])  # every registered op is an Op
        impl = op.impls[provider]
        for check in chosen:
            if not impl.supported:
                why = f"provider not supported here: {impl.reason or 'no reason given'}"
                outcome = Outcome(name, check.name, "skip", why)
            else:
                outcome = check.run(op, impl, settings)
            report.outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)
    return report
