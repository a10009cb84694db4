"""The ``opir`` command: ``info``, ``build``, ``bench dispatch|kernels|compile|model|tp``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
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
    table = Table(
        title="ops x providers, with the effective priority in eager mode and under opir.compile"
    )
    table.add_column("op", no_wrap=True, min_width=max(len(op.name) for op in ops))
    for provider in providers:
        table.add_column(provider)
    table.add_column("eager priority")
    table.add_column("compile priority")
    reasons: dict[str, int] = {}  # "provider: why" -> footnote number, printed once
    for op in ops:
        cells = []
        for provider in providers:
            impl = op.impls.get(provider)
            if impl is None:
                cells.append("[dim]-[/dim]")
            elif impl.supported:
                cells.append("[green]yes[/green]" + (" (inplace)" if impl.inplace else ""))
            else:
                note = f"{provider}: {impl.reason or 'unsupported'}"
                cells.append(f"[red]no[/red] ({reasons.setdefault(note, len(reasons) + 1)})")
        eager, compiled = op.get_priority(), op.compile_priority().providers
        table.add_row(op.name, *cells, " > ".join(eager), " > ".join(compiled))
    console.print(table)
    for note, number in reasons.items():
        console.print(f"({number}) {escape(note)}")
    return 0


def _bench_dispatch(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from opir.bench import dispatch
    from opir.bench.kernels import default_device

    device = args.device or default_device()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing dispatch", total=2 * args.rounds)
        results = dispatch.run(
            rounds=args.rounds,
            number=args.number,
            on_round=lambda: progress.advance(task),
            device=device,
        )
        results.append(dispatch.run_trivial(rounds=args.rounds, device=device))
    for result in results:
        table = Table(
            title=f"dispatch cost, rms_norm 1x64 fp32 on {device}, {result.mode}, selected "
            f"provider "
            f"'{result.provider}' (noise floor {result.noise_floor_us:.3f} µs)"
        )
        table.add_column("call")
        table.add_column("median µs/call", justify="right")
        table.add_column("overhead vs direct, µs", justify="right")
        for name in result.median_us:
            table.add_row(name, f"{result.median_us[name]:.2f}", f"{result.overhead_us[name]:+.3f}")
        console.print(table)
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    import opir
    from opir.bench import kernels

    shape_kw = {}
    if args.short:
        shape_kw = {"tokens": (1, 256, 4096), "hidden": (4096,), "variants": kernels.VARIANTS[::2]}
    providers = [p for p in args.providers.split(",") if p]
    total = (
        2
        * len(shape_kw.get("variants", kernels.VARIANTS))
        * len(shape_kw.get("tokens", kernels.TOKENS))
        * len(shape_kw.get("hidden", kernels.HIDDEN))
    )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing kernels (first use builds/compiles)", total=total)
        results = kernels.run(
            providers=providers,
            rounds=args.rounds,
            on_result=lambda _: progress.advance(task),
            **shape_kw,
        )
    names = [n for n in dict.fromkeys(n for r in results for n in r.median_us) if n != kernels.COPY]
    for op in dict.fromkeys(r.op for r in results):
        copy = "copy_ into existing memory" if opir.registry[op].allow_inplace else "clone()"
        table = Table(
            title=f"{op}: median µs, GB/s, fraction of copy bandwidth (copy = {copy} of the "
            "same bytes), speed-up vs native"
        )
        for column in ("x dtype / weight", "shape", "MiB", "copy µs"):
            table.add_column(column, justify="right")
        for name in names:
            table.add_column(name, justify="right")
        for r in (r for r in results if r.op == op):
            cells = [
                f"{r.median_us[n]:.1f} µs {r.gbps(n):.1f} GB/s {r.of_copy(n):.0%} "
                f"{r.speedup(n):.1f}x"
                if r.has(n)
                else "[dim]n/a[/dim]"
                for n in names
            ]
            table.add_row(
                r.variant,
                f"{r.tokens}x{r.hidden}",
                f"{r.bytes_moved / 2**20:.2f}",
                f"{r.median_us[kernels.COPY]:.1f}",
                *cells,
            )
        console.print(table)
    for target in kernels.check_targets(results):
        mark = "[green]met[/green]" if target.met else "[red]NOT met[/red]"
        console.print(f"target: {target.description}: {mark}")
        for failure in target.failures:
            console.print(f"    {failure}")
    if args.plot:
        kernels.plot(results, args.plot)
        console.print(f"plot written to {args.plot}")
    return 0


def _bench_activations(args: argparse.Namespace) -> int:
    from opir.bench import activations

    return activations.main(
        vllm=args.vllm, short=args.short, rounds=args.rounds, threads=args.threads
    )


def _bench_compile(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from opir.bench import compile as bench

    kwargs = {"tokens": (16,), "layers": 2} if args.short else {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("compiling and timing", total=None)
        results = bench.run(
            rounds=args.rounds,
            on_step=lambda what: progress.update(task, description=what),
            **kwargs,
        )
    names = list(results[0].median_ms)
    table = Table(
        title="decoder stack (hidden 1024, bf16): median ms per forward, ratio to torch.compile"
    )
    table.add_column("tokens", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            str(r.tokens),
            *(f"{r.median_ms[n]:.3f} ms ({r.ratio_to_plain[n]:.2f}x)" for n in names),
        )
    console.print(table)
    for name, fired in results[-1].fusions.items():  # opir's fusions in the Inductor run
        unfused = "; ".join(results[-1].unfused[name]) or "none"
        console.print(f"{name}: fusions {fired or '{}'}, norms left unfused: {unfused}")
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    from opir.bench import model as bench

    kwargs = {"tokens": (1, 16), "generate": 8, "rounds": 3} if args.short else {}
    with console.status("building, compiling and timing") as status:
        results = bench.run(layers=args.layers, on_step=status.update, grad=args.grad_on, **kwargs)
    mode = "grad on" if args.grad_on else "inference_mode"
    table = Table(
        title=f"Qwen3-0.6B-shaped model, {args.layers} layers, random weights, {mode}: median "
        "ms, ratio to stock eager (per-round, interleaved)"
    )
    for column in ("dtype", "case", *bench.VARIANTS):
        table.add_column(column, justify="right")
    for r in results:
        cells = [
            f"{r.median_ms[n]:.2f} ({r.ratio_to_stock[n]:.2f}x)"
            if n in r.median_ms
            else f"[red]failed[/red]: {r.failed.get(n, '?')}"
            for n in bench.VARIANTS
        ]
        table.add_row(r.dtype, r.case, *cells)
    console.print(table)
    if args.plot:
        bench.plot(results, args.plot)
        console.print(f"plot written to {args.plot}")
    return 0


def _bench_tp(args: argparse.Namespace) -> int:
    from opir.bench import tp

    with console.status("spawning 2 gloo ranks and timing collectives"):
        medians = tp.run(tokens=args.tokens, rounds=args.rounds)
    table = Table(title=f"2 gloo ranks, bf16 [{args.tokens}, 1024], median µs per call (rank 0)")
    table.add_column("call")
    table.add_column("µs", justify="right")
    for name, value in medians.items():
        table.add_row(name, f"{value:.0f}")
    console.print(table)
    return 0


def _build(_: argparse.Namespace) -> int:
    from opir.providers import cpu

    module = cpu.build.load()
    cpu.extension()
    console.print(f"cpu provider ready: {module.__file__}")
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
    d.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is usable, else cpu"
    )
    d.set_defaults(run=_bench_dispatch)
    k = benches.add_parser("kernels", help="kernel time per provider next to a plain copy")
    k.add_argument("--short", action="store_true", help="a few shapes only (for `make run`)")
    k.add_argument("--rounds", type=int, default=9, help="interleaved rounds per shape")
    k.add_argument(
        "--providers",
        default="native,cpu,inductor,triton,flashinfer",
        help="comma-separated providers to time (unsupported ones are skipped)",
    )
    k.add_argument("--plot", metavar="FILE.png", help="draw GB/s per provider per shape")
    k.set_defaults(run=_bench_kernels)
    c = benches.add_parser("compile", help="eager vs opir.compile vs plain torch.compile")
    c.add_argument("--short", action="store_true", help="16 tokens, 2 layers (for `make run`)")
    c.add_argument("--rounds", type=int, default=15, help="interleaved rounds per token count")
    c.set_defaults(run=_bench_compile)
    m = benches.add_parser("model", help="Qwen3-0.6B-shaped transformers model, stock vs opir")
    m.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    m.add_argument("--short", action="store_true", help="1/16 tokens, generate 8 (`make run`)")
    m.add_argument("--plot", metavar="FILE.png", help="draw the ratios to stock eager")
    m.add_argument("--grad-on", action="store_true", help="autograd on (a user who forgot no_grad)")
    m.set_defaults(run=_bench_model)
    t = benches.add_parser("tp", help="collectives and all_reduce_rms_norm on 2 local ranks")
    t.add_argument("--tokens", type=int, default=16)
    t.add_argument("--rounds", type=int, default=15)
    t.set_defaults(run=_bench_tp)
    a = benches.add_parser("activations", help="activation ops vs native (and vLLM's CPU _C)")
    a.add_argument("--vllm", action="store_true", help="also time vLLM's torch.ops._C kernels")
    a.add_argument("--short", action="store_true", help="a few shapes only")
    a.add_argument("--rounds", type=int, default=7, help="interleaved rounds per shape")
    a.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    a.set_defaults(run=_bench_activations)
    commands.add_parser(
        "build", help="build the cpu provider's C++ kernels now instead of at first use"
    ).set_defaults(run=_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
