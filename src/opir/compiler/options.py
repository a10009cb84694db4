"""The options of ``opir.backend`` / ``opir.compile``, validated once."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from opir.core.config import resolve_config
from opir.core.op import Op

FUSE_QUANT_POLICIES = ("auto", "always", "kernel", "never")

FUSE_QUANT_DEFAULT: dict[str, str] = {
    # Measured (docs/compiler.md, "Norm/activation + quant"; bench.quant_compile.
    # norm_quant_decision): the fused cpu kernel takes 0.59x / 0.23x the time of
    # Inductor's unfused rms_norm + dynamic_quant at 16 / 256 tokens (hidden 4096),
    # 25 us more at 1 token; without a cpu kernel the fused native costs 1.00x.
    "cpu": "always",
    # NOT measured (no GPU here): vLLM's rule. Upstream found Inductor's generated
    # norm+quant faster than the hand-written kernel on NVIDIA, so fuse only when the
    # fused op is lowered to a hand-written kernel (triton/flashinfer/...).
    "cuda": "kernel",
}
"""``fuse_quant="auto"`` per device type; other GPU types use the ``cuda`` entry."""


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
    ``options``, handed to Inductor as config patches; ``fuse_quant``: when the
    norm/activation -> quant rules fuse: ``"always"``, ``"kernel"`` (only when the
    fused op would lower to a hand-written kernel, not ``native``/``inductor``),
    ``"never"``, or ``"auto"``: the measured per-platform default
    (:data:`FUSE_QUANT_DEFAULT`, by the device of the quantised tensor).
    """

    inductor: bool = True
    fuse: bool = True
    eliminate_clones: bool = True
    priority: tuple[tuple[Op, tuple[str, ...]], ...] = ()
    mode: str | None = None
    inductor_options: tuple[tuple[str, Any], ...] = ()
    fuse_quant: str = "auto"

    def __post_init__(self) -> None:
        if self.fuse_quant not in FUSE_QUANT_POLICIES:
            raise ValueError(
                f"opir.backend: fuse_quant must be one of {list(FUSE_QUANT_POLICIES)}, "
                f"got {self.fuse_quant!r}"
            )

    def quant_policy(self, device_type: str) -> str:
        """``fuse_quant`` with ``"auto"`` resolved for a device type ("cpu", "cuda", ...)."""
        if self.fuse_quant != "auto":
            return self.fuse_quant
        return FUSE_QUANT_DEFAULT.get(device_type, FUSE_QUANT_DEFAULT["cuda"])

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
