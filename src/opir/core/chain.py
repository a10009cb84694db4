"""Priority lists turned into dispatch chains.

A *chain* is what the hot path walks: the impls of one op that survived
filtering, each paired with its predicate and the function to call. Filtering
happens once, when a priority is set: providers that are not supported on
this platform are dropped (and remembered, for tracing and strict mode), the
list is cut after the first impl with no predicate, and ``native`` is appended
with a single warning if nothing unconditional remains.

The effective list is the user's entries followed by the platform defaults
for the op (``native`` when no defaults were declared).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opir.core.errors import PriorityError
from opir.core.impl import Impl

if TYPE_CHECKING:
    from opir.core.op import Op

Entry = tuple[Callable[..., bool] | None, Callable[..., Any]]
Mode = str  # "eager" or "compile"

_platform_defaults: dict[Mode, dict[str, tuple[str, ...]]] = {"eager": {}, "compile": {}}
_warned_native_append: set[str] = set()
_epoch = [0]  # bumped whenever any op's process-wide chain changes


def epoch() -> int:
    """A counter that changes whenever a process-wide priority or impl changes."""
    return _epoch[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Chain:
    """The filtered priority of one op."""

    user: tuple[str, ...]  # what the user listed (before platform defaults)
    requested: tuple[str, ...]  # user entries + platform defaults, deduplicated
    impls: tuple[Impl, ...]  # what dispatch walks, in order
    dropped: tuple[tuple[str, str], ...]  # (provider, why) removed at set time
    functional: tuple[Entry, ...]  # for the default overload (in-place impls get clones)
    donating: tuple[Entry, ...]  # for maybe_inplace (in-place impls write into inputs)

    @property
    def providers(self) -> list[str]:
        return [impl.provider for impl in self.impls]

    @property
    def preferred(self) -> str:
        return self.requested[0]


def set_platform_defaults(defaults: Mapping[str, Sequence[str]], *, mode: Mode = "eager") -> None:
    """Declare this process's measured default order per op (providers call this).

    ``mode="compile"`` sets the order the lowering pass of ``opir.compile``
    uses (where Inductor may fuse the native decomposition with neighbours).
    Names of providers that are not registered are skipped when chains are
    built, so a table may mention optional providers.
    """
    from opir.core.op import registry

    for op_name, providers in defaults.items():
        _platform_defaults[mode][op_name] = tuple(providers)
        if op_name in registry:
            registry[op_name]._rebuild()


def platform_defaults(op_name: str, mode: Mode = "eager") -> tuple[str, ...]:
    table = _platform_defaults[mode]
    if mode == "compile" and op_name not in table:
        table = _platform_defaults["eager"]
    return table.get(op_name, ("native",))


def validate_providers(op: Op, providers: Sequence[str]) -> tuple[str, ...]:
    """Reject anything that is not a sequence of registered provider names."""
    if isinstance(providers, str) or not isinstance(providers, Sequence):
        raise PriorityError(
            f"priority for op '{op.name}' must be a list of provider names, got "
            f"{providers!r}; e.g. [{', '.join(repr(p) for p in op.impls)}]"
        )
    unknown = [p for p in providers if p not in op.impls]
    if unknown:
        raise PriorityError(
            f"unknown provider(s) {unknown} for op '{op.name}'; "
            f"registered providers are {sorted(op.impls)}"
        )
    return tuple(providers)


def build_chain(op: Op, user: Sequence[str], mode: Mode = "eager") -> Chain:
    """Filter ``user + platform defaults`` for ``op`` into a Chain."""
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

    return Chain(
        user=tuple(user),
        requested=tuple(requested) or ("native",),
        impls=tuple(kept),
        dropped=tuple(dropped),
        functional=tuple((i.supports_args, _functional_fn(op, i)) for i in kept),
        donating=tuple((i.supports_args, i.fn) for i in kept),
    )


def _functional_fn(op: Op, impl: Impl) -> Callable[..., Any]:
    """The default overload must not mutate: give in-place impls clones."""
    if not impl.inplace:
        return impl.fn
    fn, positions = impl.fn, op.activation_positions

    def cloning(*args: Any) -> Any:
        args = list(args)
        for i in positions:
            args[i] = args[i].clone()
        return fn(*args)

    cloning.__name__ = f"{impl.provider}_{op.name}_on_clones"
    return cloning
