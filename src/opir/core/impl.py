"""One provider's implementation of one op, and the clone wrapper in-place impls need."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

_increment_version = torch._C._increment_version


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


_serials = itertools.count(1)


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
    other, themselves or another tensor argument (also through another storage
    over the same memory); for the others opir checks each ``maybe_inplace``
    call and runs overlapping ones on clones (see :func:`guarded_donation`).
    ``serial`` is unique per Impl object in this process, never reused (unlike
    ``id(fn)`` once a function is freed): what caches key an impl's identity on.
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
    serial: int = dataclasses.field(
        default_factory=lambda: next(_serials), init=False, repr=False, compare=False
    )

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
            if cloned[i] is not None:  # an optional activation (rotary's key) may be absent
                cloned[i] = cloned[i].clone()
        return fn(*cloned)

    cloning.__name__ = f"{getattr(fn, '__name__', 'impl')}_on_clones"
    return cloning


def byte_extent(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[first, end)`` that ``t``'s elements may occupy (``(0, 0)`` when empty).

    By address, not by storage: one memory can be reached through two storages
    (``torch.from_numpy`` twice on one array, ``torch.frombuffer``), which
    storage-identity checks such as ``torch._C._overlaps`` take for disjoint.
    """
    n = t.numel()
    if not n:
        return 0, 0
    first = t.data_ptr()
    if t.is_contiguous():
        return first, first + n * t.element_size()
    reach = 1 + sum(st * (sz - 1) for st, sz in zip(t.stride(), t.shape, strict=True))
    return first, first + reach * t.element_size()


def _rows(t: torch.Tensor) -> tuple[int, int] | None:
    """``(row stride, row width)`` in bytes when ``t``'s elements lie in rows: every
    element at ``first + i * stride + [0, width)`` with ``width <= stride`` (the largest
    stride is the row stride; the other dims must fit inside one row). None otherwise."""
    dims = [(st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz > 1]
    if len(dims) < 2:
        return None
    outer = max(st for st, _ in dims)
    inner = [(st, sz) for st, sz in dims]
    inner.remove(next(d for d in dims if d[0] == outer))
    width = 1 + sum(st * (sz - 1) for st, sz in inner)
    if width > outer:
        return None
    size = t.element_size()
    return outer * size, width * size


def _disjoint_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are column blocks of the same rows that do not meet:
    e.g. the q and k column views of one fused qkv buffer."""
    ra, rb = _rows(a), _rows(b)
    if ra is None or rb is None or ra[0] != rb[0]:
        return False
    stride = ra[0]
    shift = (b.data_ptr() - a.data_ptr()) % stride  # b's row start within a's rows
    return ra[1] <= shift and shift + rb[1] <= stride


def may_share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Conservative: False only when ``a`` and ``b`` provably touch no common byte
    (disjoint address extents, different devices, or disjoint column blocks of the
    same rows, as the q, k and v views of one fused qkv buffer are)."""
    a0, a1 = byte_extent(a)
    b0, b1 = byte_extent(b)
    if not (a0 < b1 and b0 < a1 and a.device == b.device):
        return False
    return not _disjoint_rows(a, b)


def guarded_donation(
    fn: Callable[..., Any],
    positions: Sequence[int],
    read_positions: Sequence[int] = (),
    list_positions: Sequence[int] = (),
) -> Callable[..., Any]:
    """In-place ``fn`` for ``maybe_inplace`` calls, run on clones when writing into
    the donated activations in place would give a wrong answer.

    That is when an activation overlaps itself (an expanded or strided view
    whose elements share memory), or when a donated activation may share memory
    with any other tensor argument the kernel reads: another activation (the
    same tensor passed twice, overlapping views), a weight or a gate that is a
    view of an activation (earlier rows would overwrite what later rows read),
    or an element of a ``list[Tensor]`` argument. Overlap is decided by address
    (:func:`may_share_memory`), so two storages over one memory count too.
    Donation only permits writing, so serving such a call on clones keeps the
    promise of equal results. ``read_positions`` are the other tensor
    parameters, ``list_positions`` the ``list[Tensor]`` ones. Cost: one
    ``is_contiguous`` per activation, plus one address comparison per
    (activation, other tensor) pair.
    """
    positions = tuple(positions)
    others = [j for j in read_positions if j not in positions]
    pairs = tuple((i, j) for k, i in enumerate(positions) for j in (*positions[k + 1 :], *others))
    list_pairs = tuple((i, j) for i in positions for j in list_positions)
    cloning = on_clones(fn, positions)

    def guarded(*args: Any) -> Any:
        for i in positions:
            if args[i] is not None and overlaps_itself(args[i]):
                return cloning(*args)
        for i, j in pairs:
            a, b = args[i], args[j]
            if b is not None and a is not None and may_share_memory(a, b):
                return cloning(*args)
        for i, j in list_pairs:
            a, seq = args[i], args[j]
            if seq and any(b is not None and may_share_memory(a, b) for b in seq):
                return cloning(*args)
        return fn(*args)

    guarded.__name__ = f"{getattr(fn, '__name__', 'impl')}_guarded"
    return guarded


def marking_donated(fn: Callable[..., Any], positions: Sequence[int]) -> Callable[..., Any]:
    """In-place ``fn`` that bumps the version counter of every donated activation.

    A kernel that writes through a data pointer (C++, triton) leaves autograd's
    version counters alone; a donated tensor that autograd saved for a backward
    (``z = x * w`` with ``w`` requiring grad saves ``x``) would then feed the
    overwritten values into that backward, a silently wrong gradient. Donation
    means "may hold anything afterwards", so every donated activation counts
    as modified, written or not, and such a backward raises torch's own "modified
    by an inplace operation" error. Bumping twice (an impl that also used an
    in-place torch op) is harmless; inference tensors have no counter to bump.
    """
    positions = tuple(positions)

    def marked(*args: Any) -> Any:
        out = fn(*args)
        _increment_version([a for a in (args[i] for i in positions) if a is not None])
        return out

    marked.__name__ = f"{getattr(fn, '__name__', 'impl')}_marked"
    return marked
