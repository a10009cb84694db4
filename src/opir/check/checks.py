"""The checks of the conformance grid. Each takes (op, impl, settings) and returns an Outcome.

A case the provider's ``supports_args`` declines counts as *declined*: native
runs instead, which is always allowed. A check passes when no case fails; it is
skipped (with the reason) when the provider declined every case or none applies.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

import opir.check.cases as _cases
from opir.check.cases import Case, clone_args, describe
from opir.check.compare import accepts, assert_close_to, assert_untouched, call, outputs
from opir.check.report import Outcome
from opir.core.impl import Impl, on_clones
from opir.core.op import Op

ACCEPTED, DECLINED, NOT_APPLICABLE = "accepted", "declined", "n/a"
Runner = Callable[[Case, tuple], str]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big the grid is: ``full`` for every shape/dtype; ``random_cases`` per op."""

    full: bool = False
    random_cases: int = 8
    seed: int = 1234


@dataclasses.dataclass(frozen=True)
class Check:
    """A named check and the one-line promise it verifies."""

    name: str
    promise: str
    run: Callable[[Op, Impl, Settings], Outcome]


def _over(
    op: Op, check: str, cases: Iterable[Case], run_one: Runner, *, declining_passes: bool = False
) -> Outcome:
    """Run ``run_one`` on each case's fresh arguments; the first failure is the detail.

    ``declining_passes``: declining every case is this check's right answer (bad
    inputs), not a reason to skip it.
    """
    start = time.perf_counter()
    ran = declined = 0
    failures: list[str] = []
    for case in cases:
        args: tuple = ()
        try:
            args = case.make()
            verdict = run_one(case, args)
        except Exception as e:  # a failing case: keep going, report the first
            first = (str(e).strip().splitlines() or [""])[0]
            failures.append(f"{case.label} [{describe(args)}]: {type(e).__name__}: {first}")
            ran += 1
            continue
        if verdict != NOT_APPLICABLE:
            ran += 1
            declined += verdict == DECLINED
    seconds = time.perf_counter() - start
    if failures:
        more = f" (and {len(failures) - 1} more of {ran} cases)" if len(failures) > 1 else ""
        return Outcome(op.name, check, "fail", failures[0] + more, ran, declined, seconds)
    if ran == 0:
        return Outcome(op.name, check, "skip", "no case applies to this op", 0, 0, seconds)
    if declined == ran and not declining_passes:
        why = f"supports_args declined all {ran} cases"
        return Outcome(op.name, check, "skip", why, ran, declined, seconds)
    return Outcome(op.name, check, "pass", "", ran, declined, seconds)


def _kept(op: Op, case: Case, args: tuple) -> tuple[int, ...]:
    """Positions a call may not write to: all, or all but the donated activations."""
    donated = set(op.activation_positions) if case.donate else set()
    return tuple(i for i in range(len(args)) if i not in donated)


def _matches_native(op: Op, impl: Impl, case: Case, args: tuple) -> str:
    """Native's values from the provider; inputs it may not write to untouched. Functional
    cases run both the eager call and the torch op (the traceable impl)."""
    try:
        expected = op.native(*clone_args(args))
    except Exception:
        return _raises_like_native(op, impl, case, args)
    verdict = ACCEPTED if accepts(impl, args) else DECLINED
    before = clone_args(args)
    assert_close_to(op, call(op, impl.provider, args, donate=case.donate), expected)
    assert_untouched(args, before, _kept(op, case, args))
    if not case.donate and verdict == ACCEPTED:
        with op.set_priority([impl.provider]):
            got = op.torch_op(*args)
        assert_close_to(op, got, expected)
        assert_untouched(args, before, _kept(op, case, args))
    return verdict


def _raises_like_native(op: Op, impl: Impl, case: Case, args: tuple) -> str:
    """Native raises on ``args``: the provider must raise the same type (or decline)."""
    try:
        op.native(*clone_args(args))
    except Exception as e:
        expected = type(e)
    else:
        return NOT_APPLICABLE
    try:
        verdict = ACCEPTED if accepts(impl, args) else DECLINED
        call(op, impl.provider, args, donate=case.donate)
    except expected:
        return verdict
    except Exception as e:
        raise AssertionError(
            f"raised {type(e).__name__} ({e}) where native raises {expected.__name__}"
        ) from e
    raise AssertionError(f"returned a result where native raises {expected.__name__}")


def check_native(op: Op, impl: Impl, s: Settings) -> Outcome:
    return _over(op, "native", _cases.grid_cases(op, full=s.full), _bind(_matches_native, op, impl))


def check_layouts(op: Op, impl: Impl, s: Settings) -> Outcome:
    cases = _cases.layout_cases(op, full=s.full)
    return _over(op, "layouts", cases, _bind(_matches_native, op, impl))


def check_zero_rows(op: Op, impl: Impl, s: Settings) -> Outcome:
    cases = _cases.empty_cases(op, full=s.full)
    return _over(op, "zero_rows", cases, _bind(_matches_native, op, impl))


def check_bad_inputs(op: Op, impl: Impl, s: Settings) -> Outcome:
    cases = list(_cases.bad_cases(op))
    if op.maybe_inplace is not None:
        cases += [
            dataclasses.replace(c, label=f"{c.label} maybe_inplace", donate=True) for c in cases
        ]
    run = _bind(_raises_like_native, op, impl)
    return _over(op, "bad_inputs", cases, run, declining_passes=True)


def check_inplace(op: Op, impl: Impl, s: Settings) -> Outcome:
    if op.maybe_inplace is None:
        return Outcome(op.name, "inplace", "skip", "the op has no maybe_inplace overload")
    cases = [
        dataclasses.replace(
            c, label=f"{c.label}{' maybe_inplace' if donate else ''}", donate=donate
        )
        for c in _cases.inplace_cases(op, full=s.full)
        for donate in (True, False)
    ]
    return _over(op, "inplace", cases, _bind(_matches_native, op, impl))


def _fake_trace(op: Op, impl: Impl, case: Case, args: tuple) -> str:
    """Trace the impl's traceable function on fake tensors, as lowering does: its
    ``supports_args`` answers a bool, the outputs have native's shapes and dtypes,
    and the traced graph computes native's values."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    fn = on_clones(impl.fn, op.activation_positions) if impl.inplace else impl.fn

    def with_constants(*tensors: torch.Tensor) -> Any:
        full = list(args)
        for i, t in zip(positions, tensors, strict=True):
            full[i] = t
        return fn(*full)

    mode = FakeTensorMode()
    fake_args = list(args)
    for i in positions:
        fake_args[i] = mode.from_tensor(args[i])
    fakes = [fake_args[i] for i in positions]
    with mode:
        if not accepts(impl, tuple(fake_args)):
            return DECLINED
        gm = make_fx(with_constants, tracing_mode="real")(*fakes)
    expected = list(outputs(op.native(*clone_args(args))))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    traced = [getattr(n, "meta", {}).get("val") for n in outputs(out_node.args[0])]
    if len(traced) != len(expected):
        raise AssertionError(f"traced {len(traced)} outputs, native returns {len(expected)}")
    for n, (t, e) in enumerate(zip(traced, expected, strict=True)):
        if isinstance(e, torch.Tensor) and (
            t is None or tuple(t.shape) != tuple(e.shape) or t.dtype != e.dtype
        ):
            got = "no value" if t is None else f"{list(t.shape)} {t.dtype}"
            raise AssertionError(
                f"output {n} traces as {got}, native returns {list(e.shape)} {e.dtype}"
            )
    assert_close_to(op, gm(*(args[i].clone() for i in positions)), tuple(expected))
    return ACCEPTED


def check_fake(op: Op, impl: Impl, s: Settings) -> Outcome:
    grid = list(_cases.grid_cases(op, full=False))
    chosen = grid if s.full else grid[::3]
    chosen += list(_cases.empty_cases(op, full=False))[:1]
    return _over(op, "fake", chosen, _bind(_fake_trace, op, impl))


def _compiled(op: Op, impl: Impl, case: Case, args: tuple) -> str:
    """opir.compile (no Inductor) with the provider pinned: lowered to it, native's values."""
    from opir.compiler.backend import compile as opir_compile

    overload = op.maybe_inplace if case.donate else op
    verdict = ACCEPTED if accepts(impl, args) else DECLINED
    expected = op.native(*clone_args(args))
    options = {"inductor": False, "priority": {op.name: [impl.provider]}}
    # A new code object per call: Dynamo caches per code object and stops compiling a
    # function after a few recompiles, so one shared lambda would end up running eagerly.
    fresh = eval("lambda *a: overload(*a)", {"overload": overload})
    compiled = opir_compile(fresh, options=options)
    got = compiled(*args)
    lowered = [lo.provider for g in compiled.opir_report.graphs for lo in g.lowered]
    if verdict == ACCEPTED and impl.provider not in lowered:
        raise AssertionError(f"the compiled graph lowered the op to {lowered}, not the provider")
    assert_close_to(op, got, expected)
    return verdict


def check_compile(op: Op, impl: Impl, s: Settings) -> Outcome:
    shapes = [(torch.float32, 7, 64)] + ([(torch.bfloat16, 7, 769)] if s.full else [])
    cases = [
        Case(
            f"{str(dtype)[6:]} {t}x{h}{' maybe_inplace' if donate else ''}",
            functools.partial(_cases.sample, op, dtype=dtype, tokens=t, hidden=h),
            donate,
        )
        for dtype, t, h in shapes
        for donate in ([False, True] if op.maybe_inplace is not None else [False])
    ]
    return _over(op, "compile", cases, _bind(_compiled, op, impl))


def _random_args(op: Op, seed: int) -> tuple:
    return _cases.random_case(op, seed)[0]


def check_random(op: Op, impl: Impl, s: Settings) -> Outcome:
    cases = [
        Case(
            f"seed={seed}{' maybe_inplace' if donate else ''}",
            functools.partial(_random_args, op, seed),
            donate,
        )
        for seed in (s.seed + 7919 * i for i in range(s.random_cases))
        for donate in ([False, True] if op.maybe_inplace is not None else [False])
    ]
    return _over(op, "random", cases, _bind(_matches_native, op, impl))


def _bind(fn: Callable[[Op, Impl, Case, tuple], str], op: Op, impl: Impl) -> Runner:
    return lambda case, args: fn(op, impl, case, args)


CHECKS: tuple[Check, ...] = (
    Check("native", "contiguous inputs over dtypes and shapes: native's values", check_native),
    Check("layouts", "hostile layouts: declined, or native's values", check_layouts),
    Check("zero_rows", "zero-row inputs: declined, or native's (empty) outputs", check_zero_rows),
    Check(
        "bad_inputs",
        "invalid arguments: declined, or the exception type native raises",
        check_bad_inputs,
    ),
    Check(
        "inplace",
        "maybe_inplace with fresh, shared and overlapping donations: native's values, "
        "non-donated inputs untouched",
        check_inplace,
    ),
    Check("fake", "traced on fake tensors: native's shapes, dtypes and values", check_fake),
    Check(
        "compile",
        "opir.compile with the provider pinned: lowered to it, native's values",
        check_compile,
    ),
    Check("random", "seeded random layouts, dtypes and parameters: as native", check_random),
)
"""Every check, in the order ``opir check`` runs and prints them."""
