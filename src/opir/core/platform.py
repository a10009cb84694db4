"""What this machine offers: CPU ISA, GPUs, Triton, a C++ compiler.

Computed lazily and cached; nothing here runs at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import platform as _py_platform
import shutil
import subprocess
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class Platform:
    """What this machine offers, as probed once per process by :func:`detect`.

    Versions are strings, absent things are None: ``cuda``/``rocm`` only when a
    device of that kind is usable, ``triton`` the installed version, ``cxx`` the
    first line of the C++ compiler's ``--version``.
    """

    torch_version: str
    python_version: str
    cpu_arch: str  # x86_64, aarch64, ...
    cpu_capability: str  # torch's vectorisation level: AVX2, AVX512, DEFAULT, ...
    cpu_threads: int
    cuda: str | None  # CUDA runtime version when a CUDA device is usable
    rocm: str | None  # HIP version when a ROCm device is usable
    xpu: bool
    gpu_name: str | None
    triton: str | None  # installed Triton version
    cxx: str | None  # first line of the C++ compiler's --version
    cxx_path: str | None

    @property
    def has_gpu(self) -> bool:
        return bool(self.cuda or self.rocm or self.xpu)

    def facts(self) -> list[tuple[str, str]]:
        """(name, value) rows for display."""
        return [
            ("torch", self.torch_version),
            ("python", self.python_version),
            ("cpu", f"{self.cpu_arch}, ISA {self.cpu_capability}, {self.cpu_threads} threads"),
            ("cuda", self.cuda or "no"),
            ("rocm", self.rocm or "no"),
            ("xpu", "yes" if self.xpu else "no"),
            ("gpu", self.gpu_name or "none"),
            ("triton", self.triton or "not installed"),
            ("c++ compiler", f"{self.cxx} ({self.cxx_path})" if self.cxx else "not found"),
        ]


def _version_line(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def _package_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def cache_root() -> Path:
    """Where opir keeps what it builds or records, one place for ``make``, scripts and wheels.

    ``$OPIR_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/opir`` (the XDG base
    directory spec; a relative ``XDG_CACHE_HOME`` is ignored, as the spec says),
    else ``~/.cache/opir``.
    """
    explicit = os.environ.get("OPIR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "opir"
    return Path.home() / ".cache" / "opir"


@functools.cache
def detect() -> Platform:
    """Probe the machine once per process.

    Example: ``opir.platform().has_gpu``, or ``opir.platform().facts()`` for a table
    """
    cuda_ok = torch.cuda.is_available()
    is_hip = torch.version.hip is not None
    xpu = bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    cxx_path = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    return Platform(
        torch_version=torch.__version__,
        python_version=_py_platform.python_version(),
        cpu_arch=_py_platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_threads=torch.get_num_threads(),
        cuda=torch.version.cuda if cuda_ok and not is_hip else None,
        rocm=torch.version.hip if cuda_ok and is_hip else None,
        xpu=xpu,
        gpu_name=torch.cuda.get_device_name() if cuda_ok else None,
        triton=_package_version("triton"),
        cxx=_version_line(cxx_path) if cxx_path else None,
        cxx_path=cxx_path,
    )
