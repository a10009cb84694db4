"""A build lock that cannot hang: it names its owner and is broken when the owner is gone.

The lock is a file created with O_EXCL holding ``{"pid", "host", "time"}``.
A waiter breaks it when the owner is on this host and no longer alive, when
its content is unreadable for longer than a few seconds (killed while
writing), or after ``OPIR_BUILD_LOCK_TIMEOUT`` seconds (default 600) in any
case, and says so on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_HOST = socket.gethostname()


def _owner_alive(owner: dict) -> bool:
    if owner.get("host") != _HOST:
        return True  # cannot tell; the bounded wait decides
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) and "pid" in owner else None
    except (OSError, ValueError):
        return None


def _timeout() -> float:
    raw = os.environ.get("OPIR_BUILD_LOCK_TIMEOUT", "600")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"OPIR_BUILD_LOCK_TIMEOUT must be a positive number of seconds, got {raw!r}"
        )
    return value


@contextlib.contextmanager
def build_lock(path: Path, poll: float = 0.2) -> Iterator[None]:
    """Hold ``path`` as an exclusive, owner-stamped lock for the duration of the block."""
    deadline = time.monotonic() + _timeout()
    first_seen: float | None = None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            owner = _read_owner(path)
            now = time.monotonic()
            first_seen = first_seen if first_seen is not None else now
            stale = None
            if owner is not None and not _owner_alive(owner):
                stale = f"its owner (pid {owner['pid']} on {owner['host']}) is no longer running"
            elif owner is None and now - first_seen > 5.0:
                stale = "it names no owner (a build was killed while taking it)"
            elif now > deadline:
                stale = f"it was held longer than OPIR_BUILD_LOCK_TIMEOUT ({_timeout():g} s)"
            if stale is None:
                time.sleep(poll)
                continue
            print(f"opir: breaking the build lock {path}: {stale}.", file=sys.stderr, flush=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": _HOST, "time": time.time()}, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
