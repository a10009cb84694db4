"""Build (once) and load the C++ kernels of the ``cpu`` provider, one extension per family.

Each source family (``<family>.cpp`` next to this file: ``norms``,
``activations``, ...) is its own extension, compiled at the first use of that
family, never at import, so a new family does not make the first norm call
wait for kernels it does not need. The extension goes to
``opir.core.platform.cache_root()`` (``$OPIR_CACHE_DIR``, else
``$XDG_CACHE_HOME/opir``, else ``~/.cache/opir``) under a key made of what the
binary depends on (family, source, flags, compiler, torch install
dir/ABI/commit, Python ABI, CPU ISA), so a change to any of them builds afresh.

Builds run in a private temporary directory under an owner-stamped lock
(``lock.py``); the finished ``.so`` is moved into place with ``os.replace``
and its size and sha256 recorded in ``manifest.json``. A cached ``.so`` is
loaded only when it matches its manifest, from a private directory
(``opir.core.cache_dir``); otherwise it is rebuilt. ``opir build`` does it
ahead of time.

Every failure of this machinery (a missing or unreadable source, an unusable
cache directory, a directory where the ``.so`` belongs, a compiler error, a
library that will not import) is raised as ``ProviderBuildError`` and
remembered for the process: later calls raise the same error at once instead
of trying a one-minute build again. The provider's impls turn it into "warn
once, withdraw cpu, answer with the next provider" unless the user asked for
cpu. A build is announced on the ``opir`` logger with its duration, and a
long one reports progress every ``_HEARTBEAT_S`` seconds (docs/cpu-build.md).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from opir.core.cache_dir import CacheDirError, check_private, secure_dir
from opir.core.errors import OpirError
from opir.core.log import get_logger
from opir.core.platform import cache_root, detect
from opir.providers.cpu.lock import build_lock

SOURCE_DIR = Path(__file__).parent
DEFAULT_FAMILY = "norms"
_HEARTBEAT_S = 15.0
_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, ProviderBuildError] = {}  # a failed build is not retried on every call
_log = get_logger(__name__)


class ProviderBuildError(OpirError, RuntimeError):
    """The C++ provider failed to compile; the message holds the compiler output."""


def isa_flags() -> list[str]:
    """Compiler flags that enable ATen's vectorisation for this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64"):
        if capability.startswith("AVX512"):
            bf16 = ["-mavx512bf16"] if _cpu_flag("avx512_bf16") else []
            return [
                *bf16,
                "-DCPU_CAPABILITY=AVX512",
                "-DCPU_CAPABILITY_AVX512",
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vl",
                "-mavx512dq",
                "-mfma",
                "-mf16c",
            ]
        if capability.startswith("AVX2"):
            return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return ["-DCPU_CAPABILITY=DEFAULT"]  # arm64 gets NEON from ATen's headers anyway


def _cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists ``flag`` (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(flag in line.split() for line in cpuinfo if line.startswith("flags"))
    except OSError:
        return False


# Flags one family needs on top of the common ones. quant.cpp repeats torch's fp32
# summation order bit for bit, which a multiply-add fused by the compiler would break.
_FAMILY_CFLAGS: dict[str, tuple[str, ...]] = {"quant": ("-ffp-contract=off",)}


def cflags(family: str | None = None) -> list[str]:
    """The compiler flags of ``family``'s extension (the common ones when None)."""
    return ["-O3", "-std=c++20", "-fopenmp", *isa_flags(), *_FAMILY_CFLAGS.get(family or "", ())]


@functools.cache
def _compiler_version() -> str:
    cxx = detect().cxx or "c++"
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return (done.stdout.splitlines() or [""])[0] + cxx
    except (OSError, subprocess.SubprocessError):
        return cxx


def families() -> list[str]:
    """The source families shipped with this install (``<family>.cpp`` next to this file)."""
    return sorted(p.stem for p in SOURCE_DIR.glob("*.cpp"))


def source(family: str = DEFAULT_FAMILY) -> Path:
    """The C++ source of ``family``; ProviderBuildError if this install lacks it."""
    if not family.isidentifier():
        raise ValueError(f"a cpu source family is a plain name like 'norms', got {family!r}")
    path = SOURCE_DIR / f"{family}.cpp"
    if not path.is_file():
        raise ProviderBuildError(
            f"opir's 'cpu' provider has no C++ source for {family!r}: {path} is missing "
            f"(this install has {families() or 'none'}). The package is incomplete: reinstall "
            "opir (`pip install --force-reinstall opir`), or choose another provider."
        )
    return path


def build_key(family: str = DEFAULT_FAMILY) -> str:
    """Hash of everything the binary depends on (a change to any of them rebuilds)."""
    digest = hashlib.sha256()
    path = source(family)
    try:
        digest.update(path.read_bytes())
    except OSError as e:
        raise ProviderBuildError(f"cannot read the cpu provider's source {path}: {e}") from e
    parts = (
        family,
        *cflags(family),
        torch.__version__,
        str(Path(torch.__file__).resolve().parent),
        str(torch._C._GLIBCXX_USE_CXX11_ABI),
        str(torch.version.git_version),
        _compiler_version(),
        sys.version,
        sys.implementation.cache_tag or "",
        platform.machine(),
    )
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def load(family: str = DEFAULT_FAMILY) -> ModuleType:
    """The compiled extension of ``family`` (building it first if this key was never built).

    Raises ProviderBuildError for any failure, and the same error again on every
    later call in this process (no retry; a new process, e.g. ``opir build``, tries again).
    """
    module = _modules.get(family)
    if module is not None:
        return module
    if not isinstance(family, str) or not family.isidentifier():
        raise ValueError(f"a cpu source family is a plain name like 'norms', got {family!r}")
    with _lock:
        if family in _failures:
            raise _failures[family]
        if family not in _modules:
            try:
                _modules[family] = _build(family)
            except ProviderBuildError as e:
                _failures[family] = e
                raise
            except Exception as e:  # OSError, ImportError, ...: the same documented path
                _failures[family] = _build_error(e, family)
                raise _failures[family] from e
    return _modules[family]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(library: Path, manifest: Path) -> bool:
    """True if ``library`` exists and matches the size and sha256 recorded at build time."""
    try:
        recorded = json.loads(manifest.read_text())
        if not library.is_file() or library.stat().st_size != recorded["size"]:
            return False
        return _sha256(library) == recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _import(name: str, library: Path) -> ModuleType:
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        if spec is None or spec.loader is None:
            raise ImportError(f"no loader for {library}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as e:
        raise ProviderBuildError(
            f"cannot import the cpu provider's library {library}: {e}. Delete "
            f"{library.parent} to rebuild it, or choose another provider."
        ) from e
    return module


def _build_error(e: BaseException, family: str) -> ProviderBuildError:
    example = _EXAMPLE_PRIORITY.get(family, "<op>=native")
    return ProviderBuildError(
        f"building opir's 'cpu' provider failed ({family}.cpp):\n{type(e).__name__}: "
        f"{e}\n\nTo run without it, choose another provider, e.g. OPIR_PRIORITY="
        f"'{example}' or opir.set_default({{...}}); `opir info` lists providers."
    )


_EXAMPLE_PRIORITY = {
    "norms": "rms_norm=native;fused_add_rms_norm=native;rms_norm_gated=native",
    "activations": "silu_and_mul=native;silu_mul=native",
    "quant": "static_quant=native;dynamic_quant=native",
}


def _build(family: str = DEFAULT_FAMILY) -> ModuleType:
    key = build_key(family)
    name = f"opir_cpu_{family}_{key}"
    try:
        secure_dir(cache_root())
        directory = secure_dir(cache_root() / f"cpu-{family}-{key}")
    except CacheDirError as e:
        raise ProviderBuildError(f"opir's 'cpu' provider has no usable cache directory: {e}") from e
    library = directory / f"{name}.so"
    manifest = directory / "manifest.json"
    if _verified(library, manifest):
        return _import(name, library)
    with build_lock(directory / "build.lock"):
        if _verified(library, manifest):  # another process built it while we waited
            return _import(name, library)
        if library.is_dir() or (library.exists() and not library.is_file()):
            raise ProviderBuildError(
                f"{library} is a directory (or another non-file) where the cpu provider's "
                f"library belongs; remove it (`rm -r {library}`) and call again."
            )
        if library.exists():
            _log.warning("%s does not match its manifest; rebuilding.", library)
        return _compile(family, name, directory, library, manifest)


def _compile(family: str, name: str, directory: Path, library: Path, manifest: Path) -> ModuleType:
    from torch.utils import cpp_extension

    _log.info(
        "building the 'cpu' provider's %s kernels in %s (once per install: about a minute "
        "on an idle machine, several under load; `opir build` does this ahead of time)...",
        family,
        directory,
    )
    started = time.monotonic()
    done = threading.Event()
    heartbeat = threading.Thread(
        target=_heartbeat, args=(family, started, done), name="opir-build-heartbeat", daemon=True
    )
    heartbeat.start()
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
    try:
        try:
            module = cpp_extension.load(
                name=name,
                sources=[str(source(family))],
                build_directory=str(scratch),
                extra_cflags=cflags(family),
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as e:
            raise _build_error(e, family) from e
        built = scratch / f"{name}.so"
        record = {"size": built.stat().st_size, "sha256": _sha256(built)}
        os.replace(built, library)
        # the loaded file is this very inode, now at its final path (scratch is deleted below)
        module.__file__ = str(library)
        partial = directory / "manifest.json.tmp"
        partial.write_text(json.dumps(record))
        os.replace(partial, manifest)
        check_private(directory)
        _log.info("built the %s kernels in %.0f s: %s", family, time.monotonic() - started, library)
        return module
    finally:
        done.set()
        shutil.rmtree(scratch, ignore_errors=True)


def _heartbeat(family: str, started: float, done: threading.Event) -> None:
    """Say every _HEARTBEAT_S seconds that the build is still running (never silent)."""
    while not done.wait(_HEARTBEAT_S):
        _log.info(
            "still building the %s kernels (%.0f s so far)...", family, time.monotonic() - started
        )
