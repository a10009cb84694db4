"""Private cache directories: created 0700, refused when another user could write them.

Whatever opir loads from its cache (compiled ``.so`` files, compile reports)
runs in the user's process, so a directory another local user can write is a
code-injection path. ``secure_dir`` creates missing directories with mode 0700
and checks every existing one it is given.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from opir.core.errors import OpirError


class CacheDirError(OpirError, RuntimeError):
    """The cache directory cannot be created or is not safe to load code from."""


def secure_dir(path: Path, *, variable: str = "OPIR_CACHE_DIR") -> Path:
    """``path`` created (mode 0700) if missing, checked to be ours and private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except (PermissionError, NotADirectoryError, FileExistsError, OSError) as e:
        raise CacheDirError(
            f"cannot create the cache directory {path}: {e}. Set {variable} to a directory "
            "you can write (e.g. export OPIR_CACHE_DIR=$HOME/.cache/opir)."
        ) from e
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirError(f"cache path {path} is not a directory; set {variable} elsewhere.")
    check_private(path, info, variable)
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(
            f"the cache directory {path} is not writable by you; set {variable} to a "
            "directory you own."
        )
    return path


def check_private(path: Path, info: os.stat_result | None = None, variable: str = "OPIR_CACHE_DIR"):
    """Raise unless ``path`` is owned by this user and not writable by group/others."""
    info = info or path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheDirError(
            f"refusing to load from {path}: it is owned by uid {info.st_uid}, not you "
            f"({os.getuid()}); another user could plant code there. Set {variable} to a "
            "directory you own."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirError(
            f"refusing to load from {path}: it is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run `chmod go-w {path}` or set "
            f"{variable} to a private directory."
        )
