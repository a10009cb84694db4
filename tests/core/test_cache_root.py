"""One cache location for make, scripts and wheels: OPIR_CACHE_DIR, XDG_CACHE_HOME, ~/.cache."""

from __future__ import annotations

from pathlib import Path

from opir.core.platform import cache_root


def test_opir_cache_dir_overrides_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("OPIR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"


def test_xdg_cache_home_is_respected(monkeypatch, tmp_path):
    monkeypatch.delenv("OPIR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "opir"


def test_default_is_dot_cache_in_home_and_relative_xdg_is_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("OPIR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore it
    assert cache_root() == Path(tmp_path) / ".cache" / "opir"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path(tmp_path) / ".cache" / "opir"
