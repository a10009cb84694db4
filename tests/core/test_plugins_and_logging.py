"""Third-party plugins that fail are logged and skipped; the opir logger and its settings."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opir.core import log

_PROBE = """
import opir
from opir.core.plugins import failed_plugins
import good_plugin
print(sorted(failed_plugins()), good_plugin.LOADED)
"""


def _fake_distribution(root: Path) -> None:
    """An installed distribution with a broken and a working ``opir.providers`` plugin."""
    (root / "broken_plugin.py").write_text("raise ImportError('needs libfoo.so')\n")
    (root / "good_plugin.py").write_text("LOADED = True\n")
    info = root / "fake_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [opir.providers]
            broken = broken_plugin
            good = good_plugin
            """
        )
    )


def test_a_broken_plugin_is_logged_and_skipped_not_fatal(tmp_path):
    _fake_distribution(tmp_path)
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr  # import opir survived the broken plugin
    assert done.stdout.split() == ["['broken']", "True"]
    err = done.stderr
    assert "opir: plugin 'broken' (broken_plugin) failed to load and is skipped" in err
    assert "ImportError: needs libfoo.so" in err and "OPIR_PLUGINS=0" in err
    assert "Traceback" not in err  # one line; the traceback only at DEBUG level


def test_opir_logger_writes_to_the_current_stderr(capsys):
    log.get_logger("opir.test").warning("hello %s", "there")
    assert capsys.readouterr().err == "opir: hello there\n"


def test_logger_names_must_live_under_opir():
    with pytest.raises(ValueError, match="under 'opir'"):
        log.get_logger("vllm.thing")


def test_log_level_variable_is_validated(monkeypatch):
    monkeypatch.setenv("OPIR_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="OPIR_LOG_LEVEL must be one of DEBUG"):
        log.configure()


def test_log_level_variable_sets_the_level(monkeypatch):
    logger = logging.getLogger("opir")
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setenv("OPIR_LOG_LEVEL", "error")
    log.configure()
    assert logger.level == logging.ERROR


def test_applications_can_own_the_logging_configuration(tmp_path):
    code = (
        "import logging; logging.basicConfig(format='APP %(name)s %(message)s'); "
        "from opir.core.log import get_logger; get_logger('opir.x').warning('hi'); "
        "print(logging.getLogger('opir').handlers)"
    )
    env = {**os.environ, "OPIR_CONFIGURE_LOGGING": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert done.stderr.strip() == "APP opir.x hi"  # through the application's root handler
