"""The built wheel and sdist work standalone, outside the repo.

The wheel is built from a copy of the checkout (so nothing is written into it),
installed into a throwaway venv in a temporary directory, and run from there:
an op call, ``opir info`` and ``opir build``. The venv reuses this
interpreter's site-packages for torch (a ``.pth`` line) so the test needs no
network and no torch download; opir itself comes only from the wheel.
"""

from __future__ import annotations

import email
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import opir

ROOT = Path(__file__).resolve().parents[1]
_SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "Makefile")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kwargs)
    assert done.returncode == 0, f"{cmd}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist built (PEP 517 hooks, no network) from a copy of the checkout."""
    tree = tmp_path_factory.mktemp("tree")
    for name in _SHIPPED:
        shutil.copy2(ROOT / name, tree / name)
    for folder in ("src", "tests", "docs", "examples"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")
        shutil.copytree(ROOT / folder, tree / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    for hook in ("build_wheel", "build_sdist"):  # one process each: setuptools keeps state
        code = f"import sys; from setuptools import build_meta as b; b.{hook}(sys.argv[1])"
        _run([sys.executable, "-c", code, str(out)], cwd=tree)
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_holds_the_cpp_sources_py_typed_license_and_metadata(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_string(wheel.read(info).decode())
    shipped_sources = {p.name for p in (ROOT / "src/opir/providers/cpu").glob("*.cpp")}
    assert shipped_sources and {f"opir/providers/cpu/{name}" for name in shipped_sources} <= names
    assert "opir/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert metadata["Name"] == "opir" and metadata["Version"] == opir.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("numpy") for r in requires)  # torch needs it (no NumPy warning)
    bench = [r for r in requires if r.endswith('extra == "bench"')]
    assert any("transformers" in r for r in bench) and any("matplotlib" in r for r in bench)
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"transformers", "triton", "flashinfer", "bench", "test"} <= extras
    assert not any(n.startswith("tests/") for n in names)


def test_sdist_holds_every_test_and_the_license(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")}
    assert tests and tests <= names
    assert {"LICENSE", "src/opir/py.typed", "src/opir/providers/cpu/norms.cpp"} <= names


_CALL = """
import warnings
warnings.simplefilter("error")
import torch, opir
from pathlib import Path
x, w = torch.randn(4, 64), torch.randn(64)
assert torch.allclose(opir.ops.rms_norm(x, w, 1e-6), opir.ops.rms_norm.native(x, w, 1e-6))
print(Path(opir.__file__).parent.parent == Path(PURELIB))
print(opir.ops.rms_norm.dispatch(x, w, 1e-6).provider)
"""


@pytest.mark.slow
def test_wheel_installed_outside_the_repo_runs_ops_info_and_build(dists, tmp_path):
    from opir.providers.cpu import build

    build.load()  # the test session's cache holds the kernels; the wheel must reuse them
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # torch & co. from this interpreter's site-packages (processed after the venv's own)
    (purelib / "_host_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    _run([*pip, "--no-index", "--quiet", str(dists["wheel"])])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPIR_PRIORITY")}
    env["OPIR_CACHE_DIR"] = str(build.cache_root())
    env["COLUMNS"] = "80"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    call = _CALL.replace("PURELIB", repr(str(purelib)))
    done = _run([str(python), "-c", call], cwd=outside, env=env)
    assert done.stdout.split() == ["True", "cpu"], done.stderr  # the wheel's opir, its kernels
    assert "Failed to initialize NumPy" not in done.stderr
    info = _run([str(venv / "bin" / "opir"), "info"], cwd=outside, env=env)
    assert "rms_norm" in info.stdout and "c++ compiler" in info.stdout
    built = _run([str(venv / "bin" / "opir"), "build"], cwd=outside, env=env)
    assert str(build.cache_root()) in built.stdout
