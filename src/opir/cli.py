"""The ``opir`` command: ``info``, ``build``, ``bench dispatch|kernels|compile|model|tp``.

Conventions: ``--version``; ``--json`` on ``info`` and every benchmark prints
one JSON document on stdout and nothing else (progress goes to stderr);
user errors (bad arguments, unknown names, a missing optional dependency, a
failed build) print one ``opir: error: ...`` message on stderr and exit
non-zero, without a traceback; optional dependencies are checked before any
work starts; tables fit the terminal (80 columns when piped) by wrapping
cells; benchmark verdicts come after the measured noise floor and say when a
miss is within it.

A subcommand is a function ``_name(args) -> int`` plus a few lines in
``build_parser``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opir.core.errors import OpirError

console = Console()  # tables and verdicts: stdout
progress_console = Console(stderr=True)  # transient progress: stderr, never in --json output


CXX_REQUIREMENT = "a C++20 compiler (g++ >= 10 or clang >= 13)"


class UsageError(OpirError, ValueError):
    """The command line asks for something that cannot be done; the message says what to do."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``opir bench kernels: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _noise_line(spreads: list[float]) -> str:
    """The noise floor of a benchmark, printed before its numbers."""
    import statistics

    known = [s for s in spreads if s == s]
    if not known:
        return "noise floor: unknown (one round); time more rounds before reading a difference"
    return (
        f"noise floor: times vary by {statistics.median(known):.0%} between rounds (median over "
        f"every measurement; worst {max(known):.0%}); a difference smaller than that is not a "
        "verdict"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _require(module: str, extra: str, what: str) -> None:
    """Fail before any work when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}: pip install 'opir[{extra}]'")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _print_json(document: Any) -> None:
    print(json.dumps(_jsonable(document), indent=2))


def _known_providers() -> list[str]:
    import opir

    return sorted({p for op in opir.registry.values() for p in op.impls})


def _providers_arg(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    known = _known_providers()
    unknown = [p for p in names if p not in known]
    if unknown or not names:
        raise UsageError(
            f"unknown provider(s) {', '.join(unknown) or '(none given)'} in --providers; "
            f"choose from {', '.join(known)}"
        )
    return names


# --- info ----------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    import opir
    from opir.core.platform import cache_root

    ops = sorted(opir.registry.values(), key=lambda op: op.name)
    providers = sorted({p for op in ops for p in op.impls}, key=lambda p: (p != "native", p))
    platform = opir.platform()
    if args.json:
        _print_json(
            {
                "version": opir.__version__,
                "platform": dataclasses.asdict(platform),
                "cache_dir": str(cache_root()),
                "cpu_build_requires": CXX_REQUIREMENT,
                "ops": {
                    op.name: {
                        "providers": {
                            p: {"supported": i.supported, "inplace": i.inplace, "reason": i.reason}
                            for p, i in op.impls.items()
                        },
                        "eager_priority": list(op.get_priority()),
                        "compile_priority": list(op.compile_priority().providers),
                    }
                    for op in ops
                },
            }
        )
        return 0

    facts = Table(title="platform", show_header=False, box=box.SIMPLE)
    facts.add_column(no_wrap=True)
    facts.add_column(overflow="fold")
    for name, value in platform.facts():
        facts.add_row(name, value)
    found = "found" if platform.cxx else "[red]not found[/red]: install g++ or set CXX"
    facts.add_row("cpu build", f"needs {CXX_REQUIREMENT}: {found}")
    facts.add_row("cache", str(cache_root()))
    console.print(facts)

    # one space between columns and no folded provider names: long op names
    # (fused_add_rms_norm_dynamic_quant) still leave 80 columns for five providers
    table = Table(
        title="ops x providers (* = in place)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("op", no_wrap=True)
    for provider in providers:
        table.add_column(provider, overflow="fold", min_width=len(provider))
    reasons: dict[str, int] = {}  # "provider: why" -> footnote number, printed once
    for op in ops:
        cells = []
        for provider in providers:
            impl = op.impls.get(provider)
            if impl is None:
                cells.append("[dim]-[/dim]")
            elif impl.supported:
                cells.append("[green]yes[/green]" + ("*" if impl.inplace else ""))
            else:
                note = f"{provider}: {impl.reason or 'unsupported'}"
                cells.append(f"[red]no[/red] ({reasons.setdefault(note, len(reasons) + 1)})")
        table.add_row(op.name, *cells)
    console.print(table)
    for note, number in reasons.items():
        console.print(f"({number}) {escape(note)}")

    order = Table(title="effective priority, eager and under opir.compile", box=box.SIMPLE_HEAD)
    order.add_column("op", no_wrap=True)
    order.add_column("mode", no_wrap=True)
    order.add_column("priority (first supported wins)", overflow="fold")
    for op in ops:
        order.add_row(op.name, "eager", " > ".join(op.get_priority()))
        order.add_row("", "compile", " > ".join(op.compile_priority().providers))
    console.print(order)
    return 0


# --- benchmarks ------------------------------------------------------------------------


def _bench_dispatch(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from opir.bench import dispatch
    from opir.bench.kernels import default_device

    device = args.device or default_device()
    with Progress(console=progress_console, transient=True, disable=args.json) as progress:
        task = progress.add_task("timing dispatch", total=2 * args.rounds)
        results = dispatch.run(
            rounds=args.rounds,
            number=args.number,
            on_round=lambda: progress.advance(task),
            device=device,
        )
        results.append(dispatch.run_trivial(rounds=args.rounds, device=device))
    if args.json:
        _print_json(
            [
                {**_jsonable(r), "noise_floor_us": r.noise_floor_us, "device": device}
                for r in results
            ]
        )
        return 0
    for result in results:
        console.print(
            f"noise floor: {result.noise_floor_us:.3f} µs (the same direct call timed twice); "
            "smaller differences mean nothing"
        )
        table = Table(
            title=f"dispatch cost, rms_norm 1x64 fp32 on {device}, {result.mode}, selected "
            f"provider '{result.provider}'"
        )
        table.add_column("call", overflow="fold")
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

    providers = _providers_arg(args.providers)
    if args.plot:
        _require("matplotlib", "bench", "--plot")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # every provider's kernels and the copy alike
    families: tuple[kernels.Family, ...] = kernels.FULL if args.full else kernels.FAMILIES
    if args.family:
        families = tuple(f for f in families if f.name in args.family)
    if args.short:
        families = tuple(kernels.shorten(f) for f in families)
    if args.vllm:
        from opir.bench.activations import load_vllm

        loaded, detail = load_vllm()
        if not loaded:
            return _fail(f"--vllm: vLLM's CPU kernels could not be loaded: {detail}")
    with Progress(console=progress_console, transient=True, disable=args.json) as progress:
        total = sum(f.size for f in families)
        task = progress.add_task("timing kernels (first use builds/compiles)", total=total)
        results = kernels.run(
            families=families,
            providers=providers,
            rounds=args.rounds,
            on_result=lambda _: progress.advance(task),
            vllm=args.vllm,
        )
    targets = kernels.check_targets(results)
    median_noise, max_noise = kernels.noise_floor(results)
    if args.plot:
        kernels.plot(results, args.plot)
    if args.json:
        _print_json(
            {
                "noise_floor": {"median_spread": median_noise, "max_spread": max_noise},
                "results": results,
                "targets": [{**_jsonable(t), "met": t.met} for t in targets],
                "plot": args.plot,
            }
        )
        return 0
    for op in dict.fromkeys(r.op for r in results):
        rows = [r for r in results if r.op == op]
        names = [
            n for n in dict.fromkeys(n for r in rows for n in r.median_us) if n != kernels.COPY
        ]
        copy = "copy_ into existing memory" if opir.registry[op].allow_inplace else "clone()"
        table = Table(
            title=f"{op}: median µs, GB/s, fraction of copy bandwidth (copy = {copy} of the "
            "same bytes), speed-up vs native"
        )
        dtype = "x dtype / weight" if rows[0].family == "norm" else "x dtype"
        shapes = {
            "norm": "tokens x hidden",
            "quant": "tokens x hidden",
            "rotary": "tokens x head_size (32 q / 8 kv heads)",
        }
        shape = shapes.get(rows[0].family, "tokens x d")
        for column in (dtype, shape, "MiB", "copy µs"):
            table.add_column(column, justify="right", overflow="fold")
        for name in names:
            table.add_column(name, justify="right", overflow="fold")
        for r in rows:
            cells = [
                f"{r.median_us[n]:.1f} µs {r.gbps(n):.1f} GB/s {r.of_copy(n):.0%} "
                + (f"{r.speedup(n):.1f}x" if r.has("native") else "")
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
    console.print(_noise_line([s for r in results for s in r.spread.values()]))
    for target in targets:
        if target.met:
            mark = "[green]met[/green]"
        elif target.missed_beyond_noise:
            mark = "[red]NOT met[/red]"
        else:
            mark = "[yellow]not met, but within the measured noise[/yellow]"
        console.print(f"target: {target.description}: {mark}")
        for failure, quiet in zip(
            target.failures, target.within_noise or [False] * len(target.failures), strict=True
        ):
            console.print(f"    {failure}" + (" (within noise)" if quiet else ""))
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return 0


def _bench_activations(args: argparse.Namespace) -> int:
    from opir.bench import activations

    return activations.main(
        vllm=args.vllm, short=args.short, rounds=args.rounds, threads=args.threads
    )


def _bench_compile(args: argparse.Namespace) -> int:
    from opir.bench import compile as plain
    from opir.bench import quant_compile as quant

    kwargs: dict[str, Any] = {"tokens": (16,), "layers": 2} if args.short else {}
    if args.quant:
        title = "W8A8 decoder (QuantLinear, hidden 1024, bf16; int8 on CPU, fp8 on GPU)"
        results = _compile_table(quant, title, args, kwargs)
        if results:
            last = results[-1]
            for name, fired in last.fusions.items():
                console.print(f"{name}: fusions {fired or '{}'}")
                for line in last.unfused[name]:
                    console.print(f"  unfused {line}")
                lowered = ", ".join(f"{o}->{p}" for o, p in last.providers[name])
                console.print(f"  lowered: {lowered}")
        return 0
    results = _compile_table(plain, "decoder stack (hidden 1024, bf16)", args, kwargs)
    for name, fired in results[-1].fusions.items() if results else ():
        unfused = "; ".join(results[-1].unfused[name]) or "none"  # opir's, Inductor run
        console.print(f"{name}: fusions {fired or '{}'}, norms left unfused: {unfused}")
    return 0


def _compile_table(
    bench: Any, title: str, args: argparse.Namespace, kwargs: dict[str, Any]
) -> list[Any]:
    """Run ``bench.run`` and print its noise line and table (or its JSON, returning [])."""
    from rich.progress import Progress

    with Progress(console=progress_console, transient=True, disable=args.json) as progress:
        task = progress.add_task("compiling and timing", total=None)
        results = bench.run(
            rounds=args.rounds,
            on_step=lambda what: progress.update(task, description=what),
            **kwargs,
        )
    if args.json:
        _print_json(results)
        return []
    console.print(_noise_line([v for r in results for v in r.spread.values()]))
    names = list(results[0].median_ms)
    table = Table(title=f"{title}: median ms per forward, ratio to torch.compile")
    table.add_column("tokens", justify="right")
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
    for r in results:
        table.add_row(
            str(r.tokens),
            *(f"{r.median_ms[n]:.3f} ms ({r.ratio_to_plain[n]:.2f}x)" for n in names),
        )
    console.print(table)
    return list(results)


def _bench_model(args: argparse.Namespace) -> int:
    _require("transformers", "bench", "opir bench model")
    if args.plot:
        _require("matplotlib", "bench", "--plot")
    from opir.bench import model as bench

    kwargs: dict[str, Any] = {"tokens": (1, 16), "generate": 8, "rounds": 3} if args.short else {}
    if args.json:
        results = bench.run(
            layers=args.layers, grad=args.grad_on, rotary=not args.no_rotary, **kwargs
        )
    else:
        with progress_console.status("building, compiling and timing") as status:
            results = bench.run(
                layers=args.layers,
                on_step=status.update,
                grad=args.grad_on,
                rotary=not args.no_rotary,
                **kwargs,
            )
    if args.plot:
        bench.plot(results, args.plot)
    if args.json:
        _print_json(
            {
                "layers": args.layers,
                "grad": args.grad_on,
                "rotary": not args.no_rotary,
                "results": results,
            }
        )
        return 0
    console.print(_noise_line([v for r in results for v in r.spread.values()]))
    mode = "grad on" if args.grad_on else "inference_mode"
    table = Table(
        title=f"Qwen3-0.6B-shaped model, {args.layers} layers, random weights, {mode}: median "
        "ms, ratio to stock eager (per-round, interleaved); applied = opir.apply(model, "
        "activations=True): norms, MLP activations"
        + (" and RoPE (eager: q/k norms fused in)" if not args.no_rotary else " (RoPE left stock)")
    )
    for column in ("dtype", "case", *bench.VARIANTS):
        table.add_column(column, justify="right", overflow="fold")
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
        console.print(f"plot written to {args.plot}")
    return 0


def _bench_tp(args: argparse.Namespace) -> int:
    from opir.bench import tp

    if args.json:
        medians = tp.run(tokens=args.tokens, rounds=args.rounds)
        _print_json({"tokens": args.tokens, "median_us": medians})
        return 0
    with progress_console.status("spawning 2 gloo ranks and timing collectives"):
        medians = tp.run(tokens=args.tokens, rounds=args.rounds)
    table = Table(title=f"2 gloo ranks, bf16 [{args.tokens}, 1024], median µs per call (rank 0)")
    table.add_column("call", overflow="fold")
    table.add_column("µs", justify="right")
    for name, value in medians.items():
        table.add_row(name, f"{value:.0f}")
    console.print(table)
    return 0


# --- build -------------------------------------------------------------------------------


def _build(_: argparse.Namespace) -> int:
    from opir.providers.cpu import build

    for family in build.families():
        module = build.load(family)
        console.print(f"cpu provider ready ({family}): {module.__file__}", soft_wrap=True)
    return 0


def _check(args: argparse.Namespace) -> int:
    from opir.check.command import run

    return run(args, console)


# --- the parser ----------------------------------------------------------------------------


def _version() -> str:
    from opir import __version__

    return __version__


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of tables"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opir", description="opir: LLM-inference ops, many kernel providers.")
    parser.add_argument("--version", action="version", version=f"opir {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    i = commands.add_parser("info", help="platform facts and the ops x providers table")
    _json_flag(i)
    i.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="benchmarks (ratios measured in one run)")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    d = benches.add_parser("dispatch", help="eager dispatch overhead vs a direct call")
    d.add_argument("--rounds", type=_positive_int, default=101, help="interleaved rounds (101)")
    d.add_argument("--number", type=_positive_int, default=500, help="calls per round (500)")
    d.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is usable, else cpu"
    )
    _json_flag(d)
    d.set_defaults(run=_bench_dispatch)
    k = benches.add_parser("kernels", help="kernel time per provider next to a plain copy")
    k.add_argument("--short", action="store_true", help="a few shapes only (for `make run`)")
    k.add_argument(
        "--full",
        action="store_true",
        help="every op with kernels (rms_norm_gated and every activation op), not only the "
        "RMSNorm pair, silu_and_mul and gelu_and_mul",
    )
    k.add_argument("--rounds", type=_positive_int, default=9, help="interleaved rounds per shape")
    k.add_argument(
        "--family",
        action="append",
        choices=("norm", "activation", "rotary", "quant"),
        help="only this op family (repeatable; default: all)",
    )
    k.add_argument(
        "--providers",
        default="native,cpu,inductor,triton,flashinfer",
        help="comma-separated providers to time (unsupported ones are skipped)",
    )
    k.add_argument("--plot", metavar="FILE.png", help="draw GB/s per provider per shape")
    k.add_argument(
        "--vllm",
        action="store_true",
        help="also time vLLM's CPU kernels where a family has one (needs vLLM's CPU wheel in "
        "this Python): _C.rotary_embedding next to opir's public maybe_inplace call, "
        "_C.static/dynamic_scaled_int8_quant next to static_quant and dynamic_quant",
    )
    k.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: default); 1 on a loaded machine, where a multi-threaded "
        "call waits for descheduled threads",
    )
    _json_flag(k)
    k.set_defaults(run=_bench_kernels)
    c = benches.add_parser("compile", help="eager vs opir.compile vs plain torch.compile")
    c.add_argument("--short", action="store_true", help="16 tokens, 2 layers (for `make run`)")
    c.add_argument("--rounds", type=_positive_int, default=15, help="rounds per token count")
    c.add_argument(
        "--quant",
        action="store_true",
        help="a W8A8 decoder (QuantLinear; int8 on CPU, fp8 on GPU) instead, with the "
        "norm/activation -> quant fusions counted",
    )
    _json_flag(c)
    c.set_defaults(run=_bench_compile)
    m = benches.add_parser("model", help="Qwen3-0.6B-shaped transformers model, stock vs opir")
    m.add_argument("--layers", type=_positive_int, default=4, help="decoder layers (default 4)")
    m.add_argument("--short", action="store_true", help="1/16 tokens, generate 8 (`make run`)")
    m.add_argument("--plot", metavar="FILE.png", help="draw the ratios to stock eager")
    m.add_argument("--grad-on", action="store_true", help="autograd on (a user who forgot no_grad)")
    m.add_argument(
        "--no-rotary", action="store_true", help="apply(..., rotary=False): RoPE left stock"
    )
    _json_flag(m)
    m.set_defaults(run=_bench_model)
    t = benches.add_parser("tp", help="collectives and all_reduce_rms_norm on 2 local ranks")
    t.add_argument("--tokens", type=_positive_int, default=16)
    t.add_argument("--rounds", type=_positive_int, default=15)
    _json_flag(t)
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
    ch = commands.add_parser("check", help="run the conformance grid on one provider's impls")
    ch.add_argument("provider", help="a built-in provider or one a plugin registers")
    ch.add_argument("--op", action="append", metavar="NAME", help="only this op (repeatable)")
    _json_flag(ch)
    ch.add_argument("--full", action="store_true", help="the big grid (every dtype/shape/layout)")
    ch.set_defaults(run=_check)
    return parser


def _fail(message: str) -> int:
    print(f"opir: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except OpirError as e:  # UsageError, ProviderBuildError, PriorityError, ...
        return _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
