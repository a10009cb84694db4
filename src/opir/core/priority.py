"""A priority: the filtered, ordered list of impls one op dispatches over.

Filtering happens once, when a priority is set, never per call: providers
not supported on this platform are dropped (and remembered with the reason,
for tracing and strict mode), the list is cut after the first impl with no
predicate, and ``native`` is appended with a single warning if nothing
unconditional remains. The requested list is the user's entries followed by
the platform defaults for the op (``native`` when none were declared).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from opir.core.errors import PriorityError
from opir.core.impl import Impl, guarded_donation, marking_donated, on_clones
from opir.core.protocols import OpLike
from opir.core.registry import Mode, platform_defaults

Entry = tuple[Callable[..., bool] | None, Callable[..., Any]]
"""(predicate or None, function) pairs: what the eager hot path walks."""

_warned_native_append: set[str] = set()


@dataclasses.dataclass(frozen=True, eq=False)
class Priority:
    """The filtered priority of one op.

    ``user``: what the user listed; ``requested``: user entries then platform
    defaults, deduplicated; ``impls``: what dispatch walks, in order;
    ``dropped``: (provider, why) removed when the priority was built;
    ``functional`` / ``donating``: the hot-path entries of the default overload
    (in-place impls run on clones) and of ``maybe_inplace``.
    """

    user: tuple[str, ...]
    requested: tuple[str, ...]
    impls: tuple[Impl, ...]
    dropped: tuple[tuple[str, str], ...]
    functional: tuple[Entry, ...]
    donating: tuple[Entry, ...]

    @property
    def providers(self) -> list[str]:
        """The provider names dispatch walks, in order."""
        return [impl.provider for impl in self.impls]

    @property
    def preferred(self) -> str:
        """The first requested provider (strict mode refuses anything else)."""
        return self.requested[0]

    def entries(self, donating: bool) -> tuple[Entry, ...]:
        return self.donating if donating else self.functional


def validate_providers(op: OpLike, providers: Sequence[str]) -> tuple[str, ...]:
    """Reject anything that is not a sequence of registered provider names."""
    if isinstance(providers, str) or not isinstance(providers, Sequence):
        raise PriorityError(
            f"priority for op '{op.name}' must be a list of provider names, got "
            f"{providers!r}; e.g. [{', '.join(repr(p) for p in op.impls)}]"
        )
    not_names = [p for p in providers if not isinstance(p, str)]
    if not_names:
        raise PriorityError(
            f"priority for op '{op.name}' must list provider names (strings), got "
            f"{not_names!r} in {list(providers)!r}; e.g. [{', '.join(repr(p) for p in op.impls)}]"
        )
    unknown = [p for p in providers if p not in op.impls]
    if unknown:
        raise PriorityError(
            f"unknown provider(s) {unknown} for op '{op.name}'; "
            f"registered providers are {sorted(op.impls)}"
        )
    return tuple(providers)


def functional_fn(impl: Impl, positions: Sequence[int], *, eager: bool) -> Callable[..., Any]:
    """``impl``'s function with functional semantics (in-place impls run on clones)."""
    fn = impl.eager_fn if eager else impl.fn
    return on_clones(fn, positions) if impl.inplace else fn


def donating_fn(impl: Impl, op: OpLike) -> Callable[..., Any]:
    """``impl``'s eager function for ``maybe_inplace`` calls: for in-place impls,
    overlap-guarded unless the impl says it handles overlapping arguments itself,
    and marking the donated activations as modified for autograd."""
    if not impl.inplace:
        return impl.eager_fn
    sig, positions = op.sig, op.activation_positions
    fn = impl.eager_fn
    if not impl.aliasing_safe:
        lists = [sig.names.index(n) for n in sig.tensor_list_names]
        fn = guarded_donation(fn, positions, sig.tensor_positions, lists)
    return marking_donated(fn, positions)


def build_priority(op: OpLike, user: Sequence[str], mode: Mode = "eager") -> Priority:
    """Filter ``user + platform defaults`` for ``op`` into a :class:`Priority`."""
    requested: list[str] = []
    for name in (*user, *platform_defaults(op.name, mode)):
        if name in op.impls and name not in requested:
            requested.append(name)

    kept: list[Impl] = []
    dropped: list[tuple[str, str]] = []
    for name in requested:
        impl = op.impls[name]
        if not impl.supported:
            dropped.append((name, f"not supported here: {impl.reason or 'no reason given'}"))
            continue
        kept.append(impl)
        if impl.unconditional:
            break
    else:
        if op.name not in _warned_native_append:
            _warned_native_append.add(op.name)
            warnings.warn(
                f"opir: no provider in the priority of '{op.name}' ({requested}) accepts every "
                "input; appending 'native' as the last resort. List 'native' (or another "
                "unconditional provider) last to silence this.",
                stacklevel=3,
            )
        kept.append(op.impls["native"])

    positions = op.activation_positions
    return Priority(
        user=tuple(user),
        requested=tuple(requested) or ("native",),
        impls=tuple(kept),
        dropped=tuple(dropped),
        functional=tuple((i.supports_args, functional_fn(i, positions, eager=True)) for i in kept),
        donating=tuple((i.supports_args, donating_fn(i, op)) for i in kept),
    )
