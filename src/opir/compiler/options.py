"""The options of ``opir.backend`` / ``opir.compile``, validated once."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from opir.core.config import resolve_config
from opir.core.op import Op


DEFAULT_PATCHES: Mapping[str, Any] = {"emulate_precision_casts": True}
"""Inductor config opir.compile sets unless the user's ``inductor_options`` say otherwise.

``emulate_precision_casts``: Inductor computes 16-bit elementwise code in fp32 and by
default drops a rounding to bf16/fp16 that is followed by more arithmetic. A lowered
native that rounds in the model dtype (the rotary ops' products, an activation rounded
before its product) would then differ from the same native run eagerly, and "the same
answer whichever kernel runs" would depend on whether the code was compiled. With it,
every cast rounds where eager rounds. Pass ``inductor_options={"emulate_precision_casts":
False}`` to trade that for Inductor's default.
"""


@dataclasses.dataclass(frozen=True)
class Options:
    """What one backend does.

    ``inductor``: generate code with Inductor (False: run the lowered ATen
    graph as is — fast to compile, for tests and debugging); ``fuse`` and
    ``eliminate_clones``: run those passes; ``priority``: the lowering
    priority of some ops for this backend only, ``((op, (providers...)), ...)``,
    replacing whatever priority is in effect when the graph compiles;
    ``mode`` / ``inductor_options``: ``torch.compile``'s ``mode`` and
    ``options``, handed to Inductor as config patches.
    """

    inductor: bool = True
    fuse: bool = True
    eliminate_clones: bool = True
    priority: tuple[tuple[Op, tuple[str, ...]], ...] = ()
    mode: str | None = None
    inductor_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> Options:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(options) - set(names)
        if unknown:
            raise TypeError(f"unknown opir.backend option(s) {sorted(unknown)}; valid: {names}")
        options = dict(options)
        if "priority" in options:
            fixed = resolve_config(options["priority"], "opir.backend(priority=...)")
            options["priority"] = tuple(
                sorted(((op, tuple(p)) for op, p in fixed.items()), key=lambda e: e[0].name)
            )
        if "inductor_options" in options:
            options["inductor_options"] = tuple(sorted(dict(options["inductor_options"]).items()))
        return cls(**options)

    def fixed(self) -> dict[Op, tuple[str, ...]]:
        """The per-backend priority as Op -> providers."""
        return dict(self.priority)

    def with_torch_compile_args(self, mode: str | None, options: Mapping | None) -> Options:
        """Merge ``torch.compile(mode=..., options=...)``, which it passes to a backend."""
        if mode in (None, "default") and not options:
            return self
        if not self.inductor:
            warnings.warn(
                f"opir.backend(inductor=False) ignores torch.compile's mode={mode!r} and "
                f"options={options!r}: no code is generated.",
                UserWarning,
                stacklevel=3,
            )
            return self
        merged = {**dict(self.inductor_options), **dict(options or {})}
        return dataclasses.replace(
            self,
            mode=mode if mode not in (None, "default") else self.mode,
            inductor_options=tuple(sorted(merged.items())),
        )

    def config_patches(self) -> dict[str, Any]:
        """Inductor config for ``mode`` and ``inductor_options``, on top of
        :data:`DEFAULT_PATCHES`."""
        patches: dict[str, Any] = dict(DEFAULT_PATCHES)
        if self.mode not in (None, "default"):
            from torch._inductor import list_mode_options

            patches.update(list_mode_options(self.mode))
        patches.update(dict(self.inductor_options))
        return patches
