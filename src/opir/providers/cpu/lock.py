"""A build lock that cannot hang: it names its owner and is broken when the owner is gone.

The lock is a file created with O_EXCL holding ``{"pid", "start", "boot", "host",
"time"}``: the owner's pid, its start time (``/proc/<pid>/stat``, clock ticks
since boot), the kernel's boot id and the wall-clock time it was taken. A pid
alone does not identify a process: after a reboot or a container restart the
same pid belongs to someone else, and a waiter that only asked "is pid N
alive?" waited out the whole timeout. A waiter breaks the lock when

- the owner is on this host and its pid is gone, or now belongs to a process
  that started at another time, or the lock was taken in another boot;
- the lock is older than ``OPIR_BUILD_LOCK_TIMEOUT`` seconds (default 600,
  far longer than a build takes) by its own timestamp, whoever holds it;
- its content stays unreadable for a few seconds (killed while writing);
- it has waited ``OPIR_BUILD_LOCK_TIMEOUT`` seconds in any case;

and logs why on the ``opir`` logger. Where ``/proc`` is missing (macOS) the
pid and the lock's age decide.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from opir.core.log import get_logger

_HOST = socket.gethostname()
_log = get_logger(__name__)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _identity() -> dict:
    pid = os.getpid()
    return {
        "pid": pid,
        "start": _start_time(pid),
        "boot": _boot_id(),
        "host": _HOST,
        "time": time.time(),
    }


def _gone(owner: dict) -> str | None:
    """Why the lock's owner is certainly not running any more, or None if it may be."""
    if owner.get("host") != _HOST:
        return None  # cannot tell; the lock's age and the bounded wait decide
    boot = _boot_id()
    if owner.get("boot") and boot and owner["boot"] != boot:
        return f"it was taken before this machine or container last started (pid {owner['pid']})"
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its owner (pid {owner['pid']} on {owner['host']}) is no longer running"
    except PermissionError:
        pass  # alive, another user's: the start time below still tells
    except (ValueError, TypeError, OverflowError):
        return f"it names an invalid pid {owner.get('pid')!r}"
    started = _start_time(pid)
    if owner.get("start") is not None and started is not None and started != owner["start"]:
        return f"pid {pid} now belongs to another process than the one that took it"
    return None


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


def _stale(owner: dict | None, unreadable_for: float, waited: float, timeout: float) -> str | None:
    if owner is not None:
        why = _gone(owner)
        if why is not None:
            return why
        taken = owner.get("time")
        if isinstance(taken, (int, float)) and time.time() - taken > timeout:
            age = time.time() - taken
            return (
                f"it was taken {age:.0f} s ago, longer than OPIR_BUILD_LOCK_TIMEOUT ({timeout:g} s)"
            )
    elif unreadable_for > 5.0:
        return "it names no owner (a build was killed while taking it)"
    if waited > timeout:
        return f"it was held longer than OPIR_BUILD_LOCK_TIMEOUT ({timeout:g} s)"
    return None


@contextlib.contextmanager
def build_lock(path: Path, poll: float = 0.2) -> Iterator[None]:
    """Hold ``path`` as an exclusive, owner-stamped lock for the duration of the block."""
    timeout = _timeout()
    start = time.monotonic()
    unreadable_since: float | None = None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            owner = _read_owner(path)
            now = time.monotonic()
            if owner is None:
                unreadable_since = unreadable_since if unreadable_since is not None else now
            else:
                unreadable_since = None
            unreadable_for = 0.0 if unreadable_since is None else now - unreadable_since
            stale = _stale(owner, unreadable_for, now - start, timeout)
            if stale is None:
                time.sleep(poll)
                continue
            _log.warning("breaking the build lock %s: %s.", path, stale)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            start = time.monotonic()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_identity(), f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
