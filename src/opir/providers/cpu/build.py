"""Build (once) and load the C++ kernels of the ``cpu`` provider.

The extension is compiled at first use, never at import, into
``$OPIR_CACHE_DIR`` (default ``~/.cache/opir``) under a key made of what
the binary depends on (source, flags, compiler, torch install dir/ABI/commit,
Python ABI, CPU ISA), so a change to any of them builds afresh.

Builds run in a private temporary directory under an owner-stamped lock
(``lock.py``); the finished ``.so`` is moved into place with ``os.replace``
and its size and sha256 recorded in ``manifest.json``. A cached ``.so`` is
loaded only when it matches its manifest, from a private directory
(``opir.core.cache_dir``); otherwise it is rebuilt. ``opir build`` does it
ahead of time.
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
from pathlib import Path
from types import ModuleType

import torch

from opir.core.cache_dir import CacheDirError, check_private, secure_dir
from opir.core.errors import OpirError
from opir.core.platform import cache_root, detect
from opir.providers.cpu.lock import build_lock

SOURCE = Path(__file__).with_name("norms.cpp")
_lock = threading.Lock()
_module: ModuleType | None = None
_failure: ProviderBuildError | None = None  # a failed build is not retried on every call


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


def cflags() -> list[str]:
    return ["-O3", "-std=c++20", "-fopenmp", *isa_flags()]


@functools.cache
def _compiler_version() -> str:
    cxx = detect().cxx or "c++"
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return (done.stdout.splitlines() or [""])[0] + cxx
    except (OSError, subprocess.SubprocessError):
        return cxx


def build_key() -> str:
    """Hash of everything the binary depends on (a change to any of them rebuilds)."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    parts = (
        *cflags(),
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


def load() -> ModuleType:
    """The compiled extension (building it first if this key was never built)."""
    global _module, _failure
    if _module is not None:
        return _module
    with _lock:
        if _failure is not None:
            raise _failure
        if _module is None:
            try:
                _module = _build()
            except ProviderBuildError as e:
                _failure = e
                raise
    return _module


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
        if library.stat().st_size != recorded["size"]:
            return False
        return _sha256(library) == recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ProviderBuildError(f"cannot import the cpu provider's library {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_error(e: BaseException) -> ProviderBuildError:
    return ProviderBuildError(
        f"building opir's 'cpu' provider failed:\n{e}\n\nTo run without it, choose another "
        "provider, e.g. OPIR_PRIORITY='rms_norm=native;fused_add_rms_norm=native;"
        "rms_norm_gated=native' or opir.set_priority({...}); `opir info` lists providers."
    )


def _build() -> ModuleType:
    key = build_key()
    name = f"opir_cpu_{key}"
    try:
        secure_dir(cache_root())
        directory = secure_dir(cache_root() / f"cpu-{key}")
    except CacheDirError as e:
        raise ProviderBuildError(f"opir's 'cpu' provider has no usable cache directory: {e}") from e
    library = directory / f"{name}.so"
    manifest = directory / "manifest.json"
    if _verified(library, manifest):
        return _import(name, library)
    with build_lock(directory / "build.lock"):
        if _verified(library, manifest):  # another process built it while we waited
            return _import(name, library)
        if library.exists():
            print(f"opir: {library} does not match its manifest; rebuilding.", file=sys.stderr)
        print(
            f"opir: building the 'cpu' provider's C++ kernels in {directory} (once, ~1 min)...",
            file=sys.stderr,
            flush=True,
        )
        return _compile(name, directory, library, manifest)


def _compile(name: str, directory: Path, library: Path, manifest: Path) -> ModuleType:
    from torch.utils import cpp_extension

    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
    try:
        try:
            module = cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                build_directory=str(scratch),
                extra_cflags=cflags(),
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as e:
            raise _build_error(e) from e
        built = scratch / f"{name}.so"
        record = {"size": built.stat().st_size, "sha256": _sha256(built)}
        os.replace(built, library)
        partial = directory / "manifest.json.tmp"
        partial.write_text(json.dumps(record))
        os.replace(partial, manifest)
        check_private(directory)
        return module
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
