"""The ``opir`` command: ``opir info``, ``opir bench dispatch``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

console = Console()


def _info(_: argparse.Namespace) -> int:
    import opir

    facts = Table(title="platform", show_header=False)
    for name, value in opir.platform().facts():
        facts.add_row(name, value)
    console.print(facts)

    ops = sorted(opir.registry.values(), key=lambda op: op.name)
    providers = sorted({p for op in ops for p in op.impls}, key=lambda p: (p != "native", p))
    table = Table(title="ops x providers (effective priority in the last column)")
    table.add_column("op")
    for provider in providers:
        table.add_column(provider)
    table.add_column("priority")
    for op in ops:
        cells = []
        for provider in providers:
            impl = op.impls.get(provider)
            if impl is None:
                cells.append("[dim]-[/dim]")
            elif impl.supported:
                cells.append("[green]yes[/green]" + (" (inplace)" if impl.inplace else ""))
            else:
                cells.append(f"[red]no[/red]: {impl.reason or 'unsupported'}")
        table.add_row(op.name, *cells, " > ".join(op.get_priority()))
    console.print(table)
    return 0


def _bench_dispatch(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from opir.bench import dispatch

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing dispatch", total=2 * args.rounds)
        results = dispatch.run(
            rounds=args.rounds, number=args.number, on_round=lambda: progress.advance(task)
        )
    for result in results:
        table = Table(
            title=f"dispatch cost, rms_norm 1x64 fp32, {result.mode}, selected provider "
            f"'{result.provider}' (noise floor {result.noise_floor_us:.3f} µs)"
        )
        table.add_column("call")
        table.add_column("median µs/call", justify="right")
        table.add_column("overhead vs direct, µs", justify="right")
        for name in dispatch.CANDIDATES:
            table.add_row(name, f"{result.median_us[name]:.2f}", f"{result.overhead_us[name]:+.3f}")
        console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="platform facts and the ops x providers table").set_defaults(
        run=_info
    )
    bench = commands.add_parser("bench", help="benchmarks (ratios measured in one run)")
    benches = bench.add_subparsers(dest="bench", required=True)
    d = benches.add_parser("dispatch", help="eager dispatch overhead vs a direct call")
    d.add_argument("--rounds", type=int, default=101, help="interleaved rounds (default 101)")
    d.add_argument("--number", type=int, default=500, help="calls per round (default 500)")
    d.set_defaults(run=_bench_dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
