"""Priority for many ops at once: dicts, files, the OPIR_PRIORITY variable.

Every form is validated completely before anything changes, so a typo in one
op's entry never leaves the others half-applied.

``OPIR_PRIORITY`` accepts either inline JSON (``{"rms_norm": ["cpu", "native"]}``),
the compact form ``rms_norm=cpu,native;fused_add_rms_norm=cpu``, or the path
of a ``.json`` / ``.toml`` file holding the same mapping.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tomllib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from opir.core import scope as _scope
from opir.core.errors import PriorityError
from opir.core.priority import build_priority, validate_providers
from opir.core.registry import ops

if TYPE_CHECKING:
    from opir.core.op import Op

ENV_VAR = "OPIR_PRIORITY"
PriorityConfig = Mapping[str, Sequence[str]]
_FORMS = (
    'inline JSON ({"rms_norm": ["cpu", "native"]}), the compact form '
    "rms_norm=cpu,native;fused_add_rms_norm=cpu, or the path of a .json/.toml file"
)


def resolve_config(config: PriorityConfig, source: str) -> dict[Op, tuple[str, ...]]:
    """Validate a whole op -> providers mapping; ``source`` names it in errors."""
    if not isinstance(config, Mapping):
        raise PriorityError(
            f"{source}: expected a mapping of op name -> list of providers, got "
            f"{type(config).__name__}"
        )
    resolved: dict[Op, tuple[str, ...]] = {}
    for name, providers in config.items():
        op = ops.get(name)
        if op is None:
            raise PriorityError(f"{source}: unknown op '{name}'; registered ops are {sorted(ops)}")
        try:
            # every registered op is an Op; the registry names the OpLike protocol only
            resolved[cast("Op", op)] = validate_providers(op, providers)
        except PriorityError as e:
            raise PriorityError(f"{source}: {e}") from None
    return resolved


def set_default(config: PriorityConfig) -> None:
    """Set the process-wide priority of several ops (``op.set_default`` for each).

    Example: ``opir.set_default({"rms_norm": ["cpu", "native"]})``
    """
    for op, providers in resolve_config(config, "set_default").items():
        op.set_default(providers)


def set_priority(config: PriorityConfig) -> None:
    """Deprecated alias of :func:`set_default` (removed in the release after 0.2).

    It was renamed because ``op.set_priority`` is a *scoped* context manager while
    this one is process-wide; the scoped form for several ops is ``opir.priority``.
    """
    warnings.warn(
        "opir.set_priority is deprecated: it sets the process-wide default, so it is now "
        "opir.set_default (same arguments); for a scoped priority use opir.priority(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    set_default(config)


def priority(config: PriorityConfig) -> contextlib.AbstractContextManager:
    """Scoped priority for several ops (this thread / asyncio task only, nestable).

    Inside a ``torch.compile`` region (``fullgraph=True`` included) the block
    pins the priority of the op calls it contains when the graph is lowered
    (see :func:`opir.core.scope.annotated`).

    Example::

        with opir.priority({"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}):
            model(x)
    """
    if _scope.compiling():
        return _scope.annotated({getattr(k, "name", k): p for k, p in config.items()})
    return _scoped_priority(config)


@contextlib.contextmanager
def _scoped_priority(config: PriorityConfig) -> Iterator[None]:
    resolved = resolve_config(config, "priority")
    with _scope.overriding({op: build_priority(op, p) for op, p in resolved.items()}):
        yield


def get_priority() -> dict[str, list[str]]:
    """The effective, filtered priority of every op in the current scope.

    Example: ``opir.get_priority()["rms_norm"]`` -> ``['cpu', 'native']``
    """
    return {name: op.get_priority() for name, op in ops.items()}


def load_priority(path: str | os.PathLike) -> None:
    """Set the process-wide priority from a JSON or TOML file (a mapping op -> list).

    Example: ``opir.load_priority("priority.toml")``
    """
    set_default(_read_file(Path(path), f"priority file {path}"))


def _no_duplicate_ops(source: str):
    """A ``json.loads`` object hook refusing an op named twice (JSON keeps the last silently)."""

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        mapping: dict[str, object] = {}
        for name, value in pairs:
            if name in mapping:
                raise PriorityError(
                    f"{source}: op '{name}' is named twice; give each op one list of providers"
                )
            mapping[name] = value
        return mapping

    return hook


def _read_file(path: Path, source: str) -> PriorityConfig:
    if path.suffix not in (".json", ".toml"):
        raise PriorityError(f"{source}: use a .json or .toml file")
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise PriorityError(f"{source}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise PriorityError(f"{source}: not a regular file; give the path of a .json/.toml file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PriorityError(f"{source}: cannot read it ({e})") from None
    try:
        if path.suffix == ".toml":  # TOML itself refuses a key given twice
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_no_duplicate_ops(source))
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise PriorityError(f"{source}: not valid {path.suffix[1:].upper()}: {e}") from None


def parse_env(value: str) -> PriorityConfig:
    """Parse an ``OPIR_PRIORITY`` value (inline JSON, compact form, or a file path)."""
    source = f"${ENV_VAR}={value!r}"
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_ops(source))
        except PriorityError:
            raise
        except ValueError as e:
            raise PriorityError(f"{source}: invalid JSON: {e}; accepted forms: {_FORMS}") from None
    if text.endswith((".json", ".toml")):
        return _read_file(Path(text), source)
    config: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, providers = item.partition("=")
        listed = [p.strip() for p in providers.split(",") if p.strip()]
        if not sep or not name.strip() or not listed:
            raise PriorityError(f"{source}: cannot parse {item!r}; accepted forms: {_FORMS}")
        if name.strip() in config:
            raise PriorityError(
                f"{source}: op '{name.strip()}' is named twice; give each op one list of providers"
            )
        config[name.strip()] = listed
    return config


def apply_env() -> None:
    """Apply ``OPIR_PRIORITY`` if set (called once when opir is imported)."""
    value = os.environ.get(ENV_VAR)
    if value:
        config = parse_env(value)
        for op, providers in resolve_config(config, f"${ENV_VAR}").items():
            op.set_default(providers)
