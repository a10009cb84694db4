"""Building the cpu provider: cache key, lazy build, and a failing build's error."""

from __future__ import annotations

import subprocess
import sys

import pytest

import opir
from opir.providers.cpu import build


def test_importing_opir_builds_nothing(tmp_path):
    code = (
        "import opir, opir.providers.cpu.build as b, sys; "
        "print(b._module is None, any('opir_cpu' in m for m in sys.modules))"
    )
    env = {"OPIR_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
    assert not any(tmp_path.iterdir())


def test_build_key_covers_source_flags_and_versions(monkeypatch, tmp_path):
    key = build.build_key()
    assert len(key) == 16 and key == build.build_key()
    changed = tmp_path / "norms.cpp"
    changed.write_text(build.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE", changed)
    assert build.build_key() != key
    monkeypatch.setattr(build, "cflags", lambda: ["-O0"])
    assert build.build_key() != key


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path))
    assert build.cache_root() == tmp_path


@pytest.mark.slow
def test_failed_build_shows_compiler_output_and_the_way_out(monkeypatch, tmp_path):
    broken = tmp_path / "norms.cpp"
    broken.write_text("#include <torch/extension.h>\nthis is not C++;\n")
    monkeypatch.setattr(build, "SOURCE", broken)
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(build.ProviderBuildError) as info:
        build._build()
    message = str(info.value)
    assert "building opir's 'cpu' provider failed" in message
    assert "error" in message and "this is not C++" in message  # the compiler's own output
    assert "OPIR_PRIORITY=" in message and "opir.set_priority" in message
    assert isinstance(info.value, opir.OpirError)
