"""Build (once) and load the C++ kernels of the ``cpu`` provider.

The extension is compiled at first use, never at import, into
``$OPIR_CACHE_DIR`` (default ``~/.cache/opir``) under a key made of the
source, the flags, the torch and Python versions and the CPU ISA, so a
change to any of them builds afresh and nothing stale is reused.
``opir build`` does it ahead of time.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from opir.core.errors import OpirError
from opir.core.platform import cache_root

SOURCE = Path(__file__).with_name("norms.cpp")
_lock = threading.Lock()
_module: ModuleType | None = None


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


def build_key() -> str:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    for part in (*cflags(), torch.__version__, sys.version, platform.machine()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def load() -> ModuleType:
    """The compiled extension (building it first if this key was never built)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            _module = _build()
    return _module


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    key = build_key()
    directory = cache_root() / f"cpu-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"opir_cpu_{key}"
    if not any(directory.glob(f"{name}*.so")):
        print(
            f"opir: building the 'cpu' provider's C++ kernels in {directory} (once, ~1 min)...",
            file=sys.stderr,
            flush=True,
        )
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            build_directory=str(directory),
            extra_cflags=cflags(),
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:
        raise ProviderBuildError(
            f"building opir's 'cpu' provider failed:\n{e}\n\nTo run without it, choose another "
            "provider, e.g. OPIR_PRIORITY='rms_norm=native;fused_add_rms_norm=native;"
            "rms_norm_gated=native' or opir.set_priority({...}); `opir info` lists providers."
        ) from e
