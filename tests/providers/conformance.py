"""Helpers to check one provider of one op against the op's native function."""

from __future__ import annotations

import torch

import opir


def clone_args(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def run_provider(op: opir.Op, provider: str, args: tuple, *, donate: bool = False):
    """Run exactly ``provider`` (strict mode: a predicate rejection is an error)."""
    call = op.maybe_inplace if donate else op
    with op.set_priority([provider]), opir.strict():
        return call(*args)


def assert_matches_native(op: opir.Op, provider: str, args: tuple) -> None:
    """Provider output within the op's tolerance of native; inputs left untouched."""
    expected = op.native(*clone_args(args))
    before = clone_args(args)
    got = run_provider(op, provider, args)
    out_dtype = args[0].dtype
    tol = op.tolerance(out_dtype)
    torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol)
    for a, b in zip(args, before, strict=True):  # the functional overload must not mutate
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def strided_rows(x: torch.Tensor, pad: int = 13) -> torch.Tensor:
    """Same values as x, rows taken from a wider buffer (last dim contiguous)."""
    wide = torch.zeros(*x.shape[:-1], x.shape[-1] + pad, dtype=x.dtype)
    wide[..., : x.shape[-1]] = x
    view = wide[..., : x.shape[-1]]
    assert view.stride(-1) == 1 and not view.is_contiguous()
    return view


def non_collapsible_3d(x2d: torch.Tensor) -> torch.Tensor:
    """[2, T, H] view whose leading dims cannot be merged into one stride."""
    t, h = x2d.shape
    buffer = torch.zeros(2, t + 3, h + 5, dtype=x2d.dtype)
    buffer[0, :t, :h] = x2d
    buffer[1, :t, :h] = x2d.flip(0)
    return buffer[:, :t, :h]
