"""``opir check PROVIDER [--op NAME] [--json] [--full]``: run the grid, print the table."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from opir.check.runner import CheckError, check_provider


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """0 when every check passed or was skipped with a reason and at least one ran;
    1 on any failure (or when nothing could be checked); 2 for unknown names."""
    import opir  # loads the built-in providers and the installed plugins

    del opir
    console = console or Console()
    try:
        if args.json:
            report = check_provider(args.provider, args.op, full=args.full)
        else:
            with console.status(f"checking {args.provider}") as status:

                def progress(outcome):
                    status.update(f"checking {args.provider}: {outcome.op} / {outcome.check} done")

                report = check_provider(args.provider, args.op, full=args.full, on_result=progress)
    except CheckError as e:
        print(f"opir check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(report.to_json())
    else:
        console.print(report)
    return 0 if report.ok else 1
