"""One provider's implementation of one op, and the clone wrapper in-place impls need."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

_internal_overlap = torch._debug_has_internal_overlap  # 0: none, 1: yes, 2: cannot tell
_overlaps = torch._C._overlaps  # conservative: True unless provably disjoint


@dataclasses.dataclass(frozen=True, eq=False)
class Impl:
    """A registered kernel.

    ``supported`` is static (platform / library availability); ``reason`` says
    why not when it is False. ``supports_args`` is the per-call argument check
    (None means "accepts everything"). ``inplace`` impls may write into the
    op's activations and return them. ``fn`` must be traceable (it is what the
    torch op's kernel runs and what lowering traces); ``eager``, when given, is
    what the eager fast path calls instead (e.g. a pybind entry point or a
    compiled function that skips the dispatcher). ``aliasing_safe`` in-place
    impls stay correct themselves when the donated activations overlap each
    other or themselves; for the others opir checks each ``maybe_inplace``
    call and runs overlapping ones on clones (see :func:`guarded_donation`).
    """

    op_name: str
    provider: str
    fn: Callable
    supported: bool = True
    supports_args: Callable[..., bool] | None = None
    inplace: bool = False
    reason: str = ""
    eager: Callable | None = None
    aliasing_safe: bool = False

    @property
    def eager_fn(self) -> Callable:
        """What the eager fast path calls."""
        return self.eager or self.fn

    @property
    def unconditional(self) -> bool:
        return self.supports_args is None

    def __repr__(self) -> str:
        flags = "" if self.supported else f", unsupported: {self.reason}"
        return f"Impl({self.op_name}/{self.provider}{', inplace' if self.inplace else ''}{flags})"


def on_clones(fn: Callable[..., Any], positions: Sequence[int]) -> Callable[..., Any]:
    """``fn`` run on clones of the arguments at ``positions``.

    This is how an in-place impl serves a functional call: the eager default
    overload uses it, and the compile-time lowering traces it (the clones
    appear as ``aten.clone`` nodes, which clone elimination may drop).
    """
    positions = tuple(positions)

    def cloning(*args: Any) -> Any:
        args = list(args)
        for i in positions:
            args[i] = args[i].clone()
        return fn(*args)

    cloning.__name__ = f"{getattr(fn, '__name__', 'impl')}_on_clones"
    return cloning


def guarded_donation(fn: Callable[..., Any], positions: Sequence[int]) -> Callable[..., Any]:
    """In-place ``fn`` for ``maybe_inplace`` calls, run on clones when writing into
    the donated activations in place would give a wrong answer.

    That is when an activation overlaps itself (an expanded or strided view
    whose elements share memory) or two activations may share memory (the same
    tensor passed twice, overlapping views). Donation only permits writing, so
    serving such a call on clones keeps the promise of equal results. Cost: one
    ``is_contiguous`` per activation, plus one overlap test per pair.
    """
    positions = tuple(positions)
    cloning = on_clones(fn, positions)

    def writable_apart(acts: list[Any]) -> bool:
        for a in acts:
            if not a.is_contiguous() and _internal_overlap(a) != 0:
                return False
        return all(not _overlaps(a, b) for i, a in enumerate(acts) for b in acts[i + 1 :])

    def guarded(*args: Any) -> Any:
        if writable_apart([args[i] for i in positions]):
            return fn(*args)
        return cloning(*args)

    guarded.__name__ = f"{getattr(fn, '__name__', 'impl')}_guarded"
    return guarded
