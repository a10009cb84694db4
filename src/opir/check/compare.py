"""Running one provider's impl of an op and comparing it with the op's native function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import torch

from opir.check.cases import clone_args
from opir.core.impl import Impl
from opir.core.op import Op
from opir.core.scope import strict


def call(op: Op, provider: str, args: tuple, *, donate: bool = False) -> Any:
    """``op(*args)`` (or ``op.maybe_inplace``) with the priority ``[provider]``:
    the provider runs when its ``supports_args`` accepts, native otherwise."""
    # only ops registered with allow_inplace are donated to, and those have maybe_inplace
    overload = cast("Callable[..., Any]", op.maybe_inplace) if donate else op
    with op.set_priority([provider]):
        return overload(*args)


def run_provider(op: Op, provider: str, args: tuple, *, donate: bool = False) -> Any:
    """Run exactly ``provider`` (strict mode: a ``supports_args`` rejection is an error)."""
    with strict():
        return call(op, provider, args, donate=donate)


def accepts(impl: Impl, args: tuple) -> bool:
    """The impl's ``supports_args`` verdict on ``args``; it must be a plain bool."""
    if impl.supports_args is None:
        return True
    verdict = impl.supports_args(*args)
    if type(verdict) is not bool:
        raise TypeError(
            f"supports_args of provider '{impl.provider}' returned {type(verdict).__name__}, "
            "not bool; return a plain Python bool (it also runs on fake tensors)"
        )
    return verdict


def outputs(value: Any) -> Iterator[Any]:
    """The leaves of an op's output (a tensor, or a tuple/list of them)."""
    if isinstance(value, tuple | list):
        for item in value:
            yield from outputs(item)
    else:
        yield value


def assert_close_to(op: Op, got: Any, expected: Any) -> None:
    """Every output of ``got`` equals native's within the op's tolerance for its dtype
    (same shapes and dtypes; NaN where native has NaN; integer outputs exactly unless
    the op overrides the tolerance for that dtype)."""
    got_leaves, want_leaves = list(outputs(got)), list(outputs(expected))
    if len(got_leaves) != len(want_leaves):
        raise AssertionError(f"{len(got_leaves)} outputs, native returns {len(want_leaves)}")
    for n, (g, e) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        if not isinstance(e, torch.Tensor):
            if g != e:
                raise AssertionError(f"output {n}: {g!r}, native returns {e!r}")
            continue
        if e.dtype.is_floating_point or e.dtype in op._tolerances:
            # integer outputs (int8 quantised values) are exact unless the op sets one
            tol = op.tolerance(e.dtype)
            atol, rtol = tol.atol, tol.rtol
        else:
            atol = rtol = 0.0
        if e.dtype.itemsize == 1 and e.dtype.is_floating_point and (atol or rtol):
            # torch compares fp8 only bitwise: compare the (exact) fp32 values instead
            if isinstance(g, torch.Tensor) and g.dtype != e.dtype:
                raise AssertionError(f"output {n}: dtype {g.dtype}, native returns {e.dtype}")
            g, e = g.float(), e.float()
        torch.testing.assert_close(
            g, e, atol=atol, rtol=rtol, equal_nan=True, msg=_prefixed(f"output {n}")
        )


def _prefixed(prefix: str) -> Callable[[str], str]:
    """A ``msg`` for ``torch.testing.assert_close``: its own message after ``prefix``."""
    return lambda message: f"{prefix}: {message}"


def assert_untouched(args: tuple, before: tuple, positions: range | tuple[int, ...]) -> None:
    """The tensors at ``positions`` hold the values they held ``before`` the call."""
    for i in positions:
        if isinstance(args[i], torch.Tensor):
            torch.testing.assert_close(
                args[i],
                before[i],
                rtol=0,
                atol=0,
                equal_nan=True,
                msg=f"argument {i} was modified by a call that may not write to it",
            )


def assert_matches_native(op: Op, provider: str, args: tuple) -> None:
    """Exactly ``provider`` (strict) within the op's tolerance of native; inputs untouched."""
    expected = op.native(*clone_args(args))
    before = clone_args(args)
    got = run_provider(op, provider, args)
    assert_close_to(op, got, expected)
    assert_untouched(args, before, range(len(args)))
