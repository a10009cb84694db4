"""Building the cpu provider: cache key, lazy build, and a failing build's error."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import opir
from opir.core.cache_dir import CacheDirError, secure_dir
from opir.providers.cpu import build
from opir.providers.cpu.lock import build_lock


def test_importing_opir_builds_nothing(tmp_path):
    code = (
        "import opir, opir.providers.cpu.build as b, sys; "
        "print(not b._modules, any('opir_cpu' in m for m in sys.modules))"
    )
    env = {"OPIR_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # a checkout run with its src first on the path
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
    assert not any(tmp_path.iterdir())


def test_build_key_covers_source_flags_and_versions(monkeypatch, tmp_path):
    key = build.build_key()
    assert len(key) == 16 and key == build.build_key()
    changed = tmp_path / "norms.cpp"
    changed.write_text(build.source("norms").read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
    assert build.build_key() != key
    monkeypatch.setattr(build, "cflags", lambda family=None: ["-O0"])
    assert build.build_key() != key


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path))
    assert build.cache_root() == tmp_path


@pytest.mark.slow
def test_failed_build_shows_compiler_output_and_the_way_out(monkeypatch, tmp_path):
    broken = tmp_path / "norms.cpp"
    broken.write_text("#include <torch/extension.h>\nthis is not C++;\n")
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(build.ProviderBuildError) as info:
        build._build()
    message = str(info.value)
    assert "building opir's 'cpu' provider failed" in message
    assert "error" in message and "this is not C++" in message  # the compiler's own output
    assert "OPIR_PRIORITY=" in message and "opir.set_default" in message
    assert isinstance(info.value, opir.OpirError)


# --- build key: what the binary links against ----------------------------------------


def test_build_key_covers_torch_install_abi_and_compiler(monkeypatch):
    key = build.build_key()
    monkeypatch.setattr(torch.version, "git_version", "another-commit")
    assert build.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", not torch._C._GLIBCXX_USE_CXX11_ABI)
    assert build.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__file__", "/elsewhere/site-packages/torch/__init__.py")
    assert build.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(build, "_compiler_version", lambda: "g++ 99.0")
    assert build.build_key() != key


# --- verified loading: a corrupted cache is rebuilt, never loaded ----------------------


def _cached_build(tmp_path, monkeypatch):
    """A copy of this process's built extension in a fresh private cache dir."""
    from opir.providers.cpu import impls

    impls.extension()
    key = build.build_key()
    source = build.cache_root() / f"cpu-norms-{key}"
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path / "cache"))
    target = secure_dir(tmp_path / "cache") / f"cpu-norms-{key}"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("build-*", "build.lock"))
    os.chmod(target, 0o700)
    return target / f"opir_cpu_norms_{key}.so", target / "manifest.json"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest"])
def test_damaged_library_is_rebuilt_not_loaded(tmp_path, monkeypatch, damage):
    library, manifest = _cached_build(tmp_path, monkeypatch)
    assert build._verified(library, manifest)
    if damage == "truncate":
        library.write_bytes(library.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))
    else:
        manifest.unlink()
    assert not build._verified(library, manifest)

    def compile_instead(*args):
        raise RuntimeError("rebuilding")

    monkeypatch.setattr(build, "_compile", compile_instead)
    with pytest.raises(RuntimeError, match="rebuilding"):
        build._build()  # it never imports the damaged file (which would be a Bus error)
    assert not (library.parent / "build.lock").exists()


def test_intact_cached_library_loads_without_compiling(tmp_path, monkeypatch):
    _cached_build(tmp_path, monkeypatch)
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("should not compile"))
    module = build._build()
    assert hasattr(module, "rms_norm")


# --- the build lock: an owner, broken when the owner is gone, bounded wait -------------


def test_lock_of_a_dead_owner_is_broken(tmp_path, capfd):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "build.lock"
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": 0}))
    start = time.monotonic()
    with build_lock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5 and not path.exists()
    assert "no longer running" in capfd.readouterr().err


def test_lock_held_too_long_is_broken_after_the_timeout(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPIR_BUILD_LOCK_TIMEOUT", "0.5")
    path = tmp_path / "build.lock"
    alive = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    path.write_text(json.dumps(alive))
    start = time.monotonic()
    with build_lock(path, poll=0.05):
        pass
    assert 0.4 < time.monotonic() - start < 5
    assert "OPIR_BUILD_LOCK_TIMEOUT" in capfd.readouterr().err


def test_lock_timeout_variable_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("OPIR_BUILD_LOCK_TIMEOUT", "soon")
    lock = build_lock(tmp_path / "build.lock")
    with pytest.raises(ValueError, match="OPIR_BUILD_LOCK_TIMEOUT"):
        lock.__enter__()


# --- cache directory: errors naming OPIR_CACHE_DIR, security checks ------------------


def test_cache_dir_under_a_file_is_a_provider_build_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(build.ProviderBuildError, match="OPIR_CACHE_DIR"):
        build._build()


def test_cache_dirs_are_created_private(tmp_path):
    made = secure_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_group_or_world_writable_dir_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(CacheDirError, match="writable by group or others"):
        secure_dir(shared)


def test_dir_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(CacheDirError, match="owned by uid"):
        secure_dir(tmp_path)


_FALLBACK = """
import warnings, torch, opir
from opir.ops import rms_norm
x, w = torch.randn(3, 16), torch.randn(16)
try:
    with rms_norm.set_priority(["cpu"]):
        rms_norm(x, w, 1e-6)
except Exception as e:
    print(type(e).__name__, "OPIR_CACHE_DIR" in str(e))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ok = all(torch.equal(rms_norm(x, w, 1e-6), rms_norm.native(x, w, 1e-6)) for _ in range(3))
print(ok, sum("'cpu' provider is unavailable" in str(c.message) for c in caught))
print(rms_norm.dispatch(x, w, 1e-6).provider)
"""


@pytest.mark.slow
def test_unusable_cache_dir_falls_back_once_unless_cpu_was_asked_for(tmp_path):
    (tmp_path / "file").write_text("")
    env = {**os.environ, "OPIR_CACHE_DIR": str(tmp_path / "file" / "cache")}
    env.pop("OPIR_PRIORITY", None)
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "ProviderBuildError True"  # asked for cpu: the error, no fallback
    assert lines[1] == "True 1"  # platform default: right answers, exactly one warning
    assert lines[2] != "cpu"


# --- one extension per source family; every failure is a recorded ProviderBuildError ---


@pytest.fixture
def fresh_state(monkeypatch):
    """build.load's per-process records, emptied for this test and restored after it."""
    monkeypatch.setattr(build, "_modules", {})
    monkeypatch.setattr(build, "_failures", {})


def test_each_family_has_its_own_key_source_and_library():
    assert "norms" in build.families()
    assert build.source("norms").name == "norms.cpp"
    assert build.source("norms").parent == build.SOURCE_DIR
    norms = build.build_key("norms")
    assert build.build_key() == norms  # norms is the default family


def test_a_family_key_differs_from_another_family_with_the_same_source(monkeypatch, tmp_path):
    (tmp_path / "norms.cpp").write_bytes(build.source("norms").read_bytes())
    (tmp_path / "twin.cpp").write_bytes(build.source("norms").read_bytes())
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
    assert build.build_key("twin") != build.build_key("norms")


def test_bad_family_name_is_a_value_error():
    with pytest.raises(ValueError, match="plain name like 'norms'"):
        build.load("../norms")


def test_missing_source_is_a_recorded_provider_build_error(monkeypatch, tmp_path, fresh_state):
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)  # a package without its .cpp files
    with pytest.raises(build.ProviderBuildError, match=r"norms\.cpp is missing") as first:
        build.load("norms")
    assert "reinstall" in str(first.value)
    monkeypatch.setattr(build, "_build", lambda family: pytest.fail("retried"))
    with pytest.raises(build.ProviderBuildError) as again:
        build.load("norms")
    assert again.value is first.value  # recorded, not retried


def test_any_exception_of_the_machinery_becomes_a_recorded_build_error(monkeypatch, fresh_state):
    calls = []

    def unreadable(family):
        calls.append(family)
        raise PermissionError(13, "Permission denied", "manifest.json")

    monkeypatch.setattr(build, "_build", unreadable)
    for _ in range(3):
        with pytest.raises(build.ProviderBuildError, match="PermissionError") as info:
            build.load("norms")
        assert isinstance(info.value.__cause__, PermissionError)
    assert calls == ["norms"]


def test_directory_where_the_library_belongs_fails_fast_without_compiling(
    monkeypatch, tmp_path, fresh_state
):
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path))
    key = build.build_key("norms")
    library = secure_dir(tmp_path / f"cpu-norms-{key}") / f"opir_cpu_norms_{key}.so"
    library.mkdir()
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("should not compile"))
    with pytest.raises(build.ProviderBuildError, match="is a directory") as info:
        build.load("norms")
    assert f"rm -r {library}" in str(info.value)
    with pytest.raises(build.ProviderBuildError):
        build.load("norms")  # recorded: no second attempt (no second ~1 min build)


_BROKEN_INSTALL = """
import sys, warnings, torch, opir
from pathlib import Path
import opir.providers.cpu.build as b
mode = sys.argv[1]
if mode == "no-source":
    b.SOURCE_DIR = Path(sys.argv[2])
else:
    key = b.build_key("norms")
    (b.cache_root() / f"cpu-norms-{key}" / f"opir_cpu_norms_{key}.so").mkdir(parents=True)
builds = []
real = b._build
b._build = lambda family: builds.append(family) or real(family)
from opir.ops import rms_norm
x, w = torch.randn(3, 16), torch.randn(16)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ok = all(torch.equal(rms_norm(x, w, 1e-6), rms_norm.native(x, w, 1e-6)) for _ in range(3))
print(ok, sum("'cpu' provider is unavailable" in str(c.message) for c in caught), len(builds))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["no-source", "directory-as-library"])
def test_broken_install_warns_once_and_answers_with_the_next_provider(tmp_path, mode):
    env = {**os.environ, "OPIR_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("OPIR_PRIORITY", None)
    done = subprocess.run(
        [sys.executable, "-c", _BROKEN_INSTALL, mode, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1", "1"]  # right answers, one warning, one attempt


# --- the lock's owner is a process, not a pid ------------------------------------------


def _me(**overrides):
    from opir.providers.cpu import lock

    return {**lock._identity(), **overrides}


@pytest.mark.parametrize(
    ("owner", "why"),
    [
        ({"start": -1}, "now belongs to another process"),  # pid reused after a restart
        ({"boot": "another-boot"}, "before this machine or container last started"),
        ({"start": None, "boot": None, "time": 0}, "longer than OPIR_BUILD_LOCK_TIMEOUT"),
    ],
)
def test_lock_whose_pid_is_alive_again_is_broken_at_once(tmp_path, capfd, owner, why):
    path = tmp_path / "build.lock"
    path.write_text(json.dumps(_me(**owner)))  # os.getpid() is alive: the pid alone says "held"
    start = time.monotonic()
    with build_lock(path, poll=0.05):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5
    assert why in capfd.readouterr().err


def test_lock_records_the_owner_start_time_and_boot_id(tmp_path):
    from opir.providers.cpu import lock

    path = tmp_path / "build.lock"
    with build_lock(path):
        owner = json.loads(path.read_text())
    assert owner["start"] == lock._start_time(os.getpid())
    assert owner["boot"] == lock._boot_id()
    if sys.platform == "linux":
        assert owner["start"] is not None and owner["boot"]
    assert lock._gone(owner) is None  # this very process: held


def test_lock_of_a_live_current_owner_is_waited_for(tmp_path, monkeypatch):
    monkeypatch.setenv("OPIR_BUILD_LOCK_TIMEOUT", "0.6")
    path = tmp_path / "build.lock"
    path.write_text(json.dumps(_me()))
    start = time.monotonic()
    with build_lock(path, poll=0.05):
        pass
    assert time.monotonic() - start > 0.5  # held until the bound, not broken early


# --- the first build is never silent ---------------------------------------------------


def test_a_build_announces_itself_reports_progress_and_its_duration(
    monkeypatch, tmp_path, capfd, fresh_state
):
    import logging
    import threading
    import types

    from torch.utils import cpp_extension

    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_HEARTBEAT_S", 0.02)
    heartbeat = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "still building" in record.getMessage():
                heartbeat.set()

    watch = Watch()
    logging.getLogger("opir").addHandler(watch)

    def fake_compiler(name, sources, build_directory, **kwargs):
        assert heartbeat.wait(30), "no progress message while the compiler ran"
        (Path(build_directory) / f"{name}.so").write_bytes(b"not really a library")
        return types.ModuleType(name)

    monkeypatch.setattr(cpp_extension, "load", fake_compiler)
    try:
        module = build.load("norms")
    finally:
        logging.getLogger("opir").removeHandler(watch)
    key = build.build_key("norms")
    assert module.__file__ == str(tmp_path / f"cpu-norms-{key}" / f"opir_cpu_norms_{key}.so")
    err = capfd.readouterr().err
    assert "opir: building the 'cpu' provider's norms kernels in" in err
    assert "`opir build` does this ahead of time" in err
    assert "opir: still building the norms kernels" in err
    assert "opir: built the norms kernels in" in err
