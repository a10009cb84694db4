"""Priority lists: filtering at set time, scopes, isolation, config forms."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import opir
from conftest import scale
from opir import PriorityError
from opir.core import config


def _register(op, provider, *, supported=True, accepts=None, reason=""):
    """Register ``scale`` as ``provider``; ``accepts(x)`` decides supports_args if given."""
    pred = None
    if accepts is not None:

        def pred(x, weight, alpha=2.0):
            return accepts(x)

    op.register_impl(provider, supported=supported, supports_args=pred, reason=reason)(scale)


@pytest.fixture
def op(scale_op):
    _register(scale_op, "fp32_only", accepts=lambda x: x.dtype == torch.float32)
    _register(scale_op, "anything")
    _register(scale_op, "gpu_only", supported=False, reason="needs CUDA")
    return scale_op


def test_default_is_native(scale_op):
    assert scale_op.get_priority() == ["native"]


def test_filtering_drops_unsupported_and_cuts_after_unconditional(op):
    op.set_default(["gpu_only", "fp32_only", "anything", "native"])
    assert op.get_priority() == ["fp32_only", "anything"]
    assert op.current_priority().dropped == (("gpu_only", "not supported here: needs CUDA"),)
    assert op.current_priority().requested == ("gpu_only", "fp32_only", "anything", "native")


def test_platform_defaults_follow_user_entries(op):
    opir.set_platform_defaults({op.name: ["fp32_only", "anything", "native"]})
    assert op.get_priority() == ["fp32_only", "anything"]
    op.set_default(["native"])
    assert op.get_priority() == ["native"]
    op.set_default([])
    assert op.get_priority() == ["fp32_only", "anything"]


def test_native_appended_once_with_warning_when_nothing_unconditional(op):
    with pytest.warns(UserWarning, match="appending 'native'"):
        opir.set_platform_defaults({op.name: ["fp32_only"]})  # a table without native
    assert op.get_priority() == ["fp32_only", "native"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.set_default(["fp32_only"])  # the second time is silent


def test_unknown_provider_lists_valid_names(op):
    with pytest.raises(PriorityError, match=r"unknown provider\(s\) \['cuda'\].*'anything'"):
        op.set_default(["cuda"])
    with pytest.raises(PriorityError, match="must be a list of provider names"):
        op.set_default("anything")


def test_dispatch_follows_predicates(op):
    op.set_default(["fp32_only", "anything"])
    assert op.dispatch(torch.ones(2), None).provider == "fp32_only"
    assert op.dispatch(torch.ones(2, dtype=torch.float16), None).provider == "anything"


def test_scoped_priority_nests_and_restores_after_exceptions(op):
    op.set_default(["anything"])
    with op.set_priority(["fp32_only", "native"]):
        assert op.get_priority() == ["fp32_only", "native"]
        with op.set_priority(["native"]):
            assert op.get_priority() == ["native"]
        assert op.get_priority() == ["fp32_only", "native"]
        with pytest.raises(ZeroDivisionError), op.set_priority(["native"]):
            1 / 0  # noqa: B018
        assert op.get_priority() == ["fp32_only", "native"]
    assert op.get_priority() == ["anything"]


def test_scoped_priority_decides_eager_calls(op):
    x = torch.ones(3)
    with opir.trace() as t:
        op(x, None)
        with op.set_priority(["anything"]):
            op(x, None)
    assert t.providers() == ["native", "anything"]


def test_scopes_are_isolated_per_thread(op):
    seen: dict[str, list[str]] = {}
    entered, release = threading.Event(), threading.Event()

    def worker():
        with op.set_priority(["anything"]):
            seen["thread"] = op.get_priority()
            entered.set()
            release.wait(5)

    with op.set_priority(["fp32_only", "native"]):
        thread = threading.Thread(target=worker)
        thread.start()
        entered.wait(5)
        seen["main"] = op.get_priority()
        release.set()
        thread.join(5)
    seen["fresh thread"] = []
    fresh = threading.Thread(target=lambda: seen["fresh thread"].extend(op.get_priority()))
    fresh.start()
    fresh.join(5)
    assert seen == {
        "thread": ["anything"],
        "main": ["fp32_only", "native"],
        "fresh thread": ["native"],
    }


def test_scopes_are_isolated_per_asyncio_task(op):
    async def task(providers, first, second, out):
        with op.set_priority(providers):
            first.set()
            await second.wait()  # the other task enters its scope meanwhile
            out.append(op.get_priority())

    async def main():
        a_in, b_in = asyncio.Event(), asyncio.Event()
        got_a, got_b = [], []
        await asyncio.gather(
            task(["anything"], a_in, b_in, got_a),
            task(["fp32_only", "native"], b_in, a_in, got_b),
        )
        return got_a, got_b, op.get_priority()

    assert asyncio.run(main()) == ([["anything"]], [["fp32_only", "native"]], ["native"])


def test_whole_config_set_is_atomic(op):
    with pytest.raises(PriorityError, match=r"unknown op 'nope'; registered ops are \["):
        opir.set_default({op.name: ["anything"], "nope": ["native"]})
    assert op.get_priority() == ["native"]  # the valid entry was not applied either
    with pytest.raises(PriorityError, match="unknown provider"):
        opir.set_default({op.name: ["anything"], "rms_norm": ["cuda"]})
    assert op.get_priority() == ["native"]
    with pytest.raises(PriorityError, match="expected a mapping"):
        opir.set_default([op.name])
    opir.set_default({op.name: ["anything"]})
    assert opir.get_priority()[op.name] == ["anything"]


def test_old_process_wide_name_still_works_with_a_deprecation_warning(op):
    with pytest.warns(DeprecationWarning, match="opir.set_default"):
        opir.set_priority({op.name: ["anything"]})
    assert op.get_priority() == ["anything"]  # process-wide, as before


def test_whole_config_scope(op):
    with opir.priority({op.name: ["fp32_only", "native"], "rms_norm": ["native"]}):
        assert op.get_priority() == ["fp32_only", "native"]
    assert op.get_priority() == ["native"]


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_load_priority_from_file(op, tmp_path, suffix):
    path = tmp_path / f"prio{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({op.name: ["anything"]}))
    else:
        path.write_text(f'{op.name} = ["anything"]\n')
    opir.load_priority(path)
    assert op.get_priority() == ["anything"]


def test_bad_priority_files(op, tmp_path):
    with pytest.raises(PriorityError, match="cannot read it"):
        opir.load_priority(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PriorityError, match="not valid JSON"):
        opir.load_priority(bad)
    yaml = tmp_path / "p.yaml"
    yaml.write_text("x: y")
    with pytest.raises(PriorityError, match=r"use a \.json or \.toml file"):
        opir.load_priority(yaml)


def test_env_value_forms(tmp_path):
    assert config.parse_env("rms_norm=cpu,native; fused_add_rms_norm = native") == {
        "rms_norm": ["cpu", "native"],
        "fused_add_rms_norm": ["native"],
    }
    assert config.parse_env('{"rms_norm": ["native"]}') == {"rms_norm": ["native"]}
    path = tmp_path / "p.toml"
    path.write_text('rms_norm = ["native"]\n')
    assert config.parse_env(str(path)) == {"rms_norm": ["native"]}
    for bad in ("rms_norm", "rms_norm=", "=cpu", "{oops"):
        with pytest.raises(PriorityError, match="OPIR_PRIORITY"):
            config.parse_env(bad)


def _import_opir_with(env_value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPIR_PRIORITY=env_value)
    code = "import opir; print(opir.get_priority()['rms_norm'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_env_var_applies_at_import_and_errors_clearly():
    ok = _import_opir_with("rms_norm=native")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "['native']"
    bad = _import_opir_with("rms_norm=nosuch")
    assert bad.returncode != 0
    assert "PriorityError: $OPIR_PRIORITY: unknown provider(s) ['nosuch']" in bad.stderr


def test_env_value_with_nested_lists_names_the_variable():
    with pytest.raises(PriorityError, match=r"\$OPIR_PRIORITY.*provider names \(strings\)"):
        config.resolve_config(config.parse_env('{"rms_norm": [["cpu"]]}'), "$OPIR_PRIORITY")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_env_value_naming_a_fifo_fails_instead_of_blocking(tmp_path):
    fifo = tmp_path / "priority.json"
    os.mkfifo(fifo)
    with pytest.raises(PriorityError, match="not a regular file"):
        config.parse_env(str(fifo))
    with pytest.raises(PriorityError, match="cannot read it"):
        config.parse_env(str(tmp_path / "missing.toml"))
