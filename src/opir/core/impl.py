"""One provider's implementation of one op, and the clone wrapper in-place impls need."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

_overlaps = torch._C._overlaps  # conservative: True unless provably disjoint


def overlaps_itself(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (an expanded or overlapping view).

    Sorted by stride, each dim must step past the furthest element the smaller
    dims reach. Never False for a tensor that overlaps; True for a few exotic
    interleaved layouts that do not (sizes (2, 3), strides (3, 2)), which then
    run on clones, still correct. Exact for every row-strided, transposed or
    sliced view. (torch's own check answers "too hard" for any non-contiguous
    tensor.)
    """
    if t.is_contiguous() or t.numel() == 0:
        return False
    reach = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True)):
        if size == 1:
            continue
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


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
        cloned = list(args)
        for i in positions:
            cloned[i] = cloned[i].clone()
        return fn(*cloned)

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
    pairs = tuple((i, j) for k, i in enumerate(positions) for j in positions[k + 1 :])
    cloning = on_clones(fn, positions)

    def guarded(*args: Any) -> Any:
        for i in positions:
            if overlaps_itself(args[i]):
                return cloning(*args)
        for i, j in pairs:
            if _overlaps(args[i], args[j]):
                return cloning(*args)
        return fn(*args)

    guarded.__name__ = f"{getattr(fn, '__name__', 'impl')}_guarded"
    return guarded
