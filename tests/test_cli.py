"""The opir command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import opir
from opir import cli


def test_info_lists_platform_ops_and_priorities(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for expected in ("torch", "2.13", "c++ compiler", "C++20", "rms_norm", "fused_add_rms_norm"):
        assert expected in out


def test_bench_dispatch_prints_every_candidate(capsys):
    assert cli.main(["bench", "dispatch", "--rounds", "3", "--number", "20"]) == 0
    out = capsys.readouterr().out
    for expected in ("inference_mode", "grad on", "op(...)", "op.torch_op(...)", "rejects"):
        assert expected in out
    assert "impl returns its input" in " ".join(out.split())
    assert "bench_dispatch_twin" not in opir.registry  # the transient op is gone


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "opir", "info"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "rms_norm" in done.stdout


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_build_command_prints_the_library_it_left_in_the_cache(capsys):
    from pathlib import Path

    from opir.core.platform import cache_root

    assert cli.main(["build"]) == 0
    out = capsys.readouterr().out
    assert "cpu provider ready (norms)" in out
    path = Path(out.split("(norms): ")[1].split()[0])
    assert path.is_file() and cache_root() in path.parents  # not a deleted scratch dir


def test_bench_kernels_short_prints_tables_targets_and_plot(capsys, tmp_path, monkeypatch):
    from opir.bench import kernels

    # one shape per family keeps this fast; --short's own shapes are checked below
    monkeypatch.setattr(
        kernels, "shorten", lambda f: dataclasses.replace(f, tokens=(4,), hidden=(256,))
    )
    monkeypatch.setattr(cli.console, "width", 160)  # wide enough that no cell is cut
    plot = tmp_path / "k.png"
    args = ["bench", "kernels", "--short", "--rounds", "2", "--providers", "native,cpu"]
    assert cli.main([*args, "--plot", str(plot)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    for expected in ("rms_norm", "fused_add_rms_norm", "clone()", "copy_ into existing", "target:"):
        assert expected in out
    for expected in ("silu_and_mul", "gelu_and_mul", "tokens x d", "approximate=", "tanh"):
        assert expected in out
    assert "norms: cpu >= 3x faster than native on every shape" in out
    assert "activations: cpu faster than native on every shape" in out
    for expected in ("static_quant", "fused_add_rms_norm_quant", "unfused"):
        assert expected in out
    assert "quant: fused cpu faster than the unfused cpu sequence" in out
    assert plot.stat().st_size > 10_000


def test_bench_kernels_short_keeps_a_couple_of_shapes_per_op():
    from opir.bench import kernels

    for family in kernels.FAMILIES:
        short = kernels.shorten(family)
        assert short.cases == family.cases
        assert len(short.tokens) * len(short.hidden) * len(short.variants) <= 6
    names = {(c.op.name, c.label) for c in kernels.ACTIVATIONS.cases}
    assert names == {
        ("silu_and_mul", ""),
        ("gelu_and_mul", "approximate=none"),
        ("gelu_and_mul", "approximate=tanh"),
    }
    full = {c.op.name for f in kernels.FULL for c in f.cases}
    assert {"rms_norm_gated", "swigluoai_and_mul", "silu_mul", "gelu_mul"} <= full


@pytest.mark.slow
def test_bench_tp_spawns_two_ranks_and_reports(capsys):
    assert cli.main(["bench", "tp", "--rounds", "2", "--tokens", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for expected in ("shape check on", "shape check off", "all_reduce_rms_norm op"):
        assert expected in out


def test_importing_opir_does_not_load_inductor():
    code = "import sys, opir; print('torch._inductor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the compile pipeline loads on first use


# --- conventions: --version, --json, one-line errors, names checked, 80 columns ---------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"opir {opir.__version__}"


def test_info_json_is_one_machine_readable_document(capsys):
    assert cli.main(["info", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == opir.__version__
    assert document["platform"]["torch_version"] == torch.__version__
    rms = document["ops"]["rms_norm"]
    assert rms["eager_priority"] == list(opir.ops.rms_norm.get_priority())
    assert rms["compile_priority"] == list(opir.ops.rms_norm.compile_priority().providers)
    assert rms["providers"]["native"]["supported"] is True


def test_info_fits_80_columns_when_piped_and_keeps_every_column():
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "opir", "info"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(done.stdout.split())
    for provider in sorted({p for op in opir.registry.values() for p in op.impls}):
        assert provider in text
    for op in opir.registry.values():  # both priorities of every op survive
        assert any(op.name in line and "eager" in line for line in lines)
        compiled = " > ".join(op.compile_priority().providers)
        assert any(line.split()[:1] == ["compile"] and compiled in line for line in lines)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "kernels", "--rounds", "0"],
        ["bench", "dispatch", "--number", "-3"],
        ["bench", "model", "--layers", "two"],
    ],
)
def test_bad_numbers_are_one_line_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "must be a whole number >= 1" in err and "--help" in err


def test_unknown_provider_is_rejected_with_the_valid_ones(capsys, monkeypatch):
    from opir.bench import kernels

    monkeypatch.setattr(kernels, "run", lambda **kw: pytest.fail("ran the benchmark"))
    assert cli.main(["bench", "kernels", "--providers", "native,bogus"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("opir: error: unknown provider(s) bogus")
    assert "cpu, flashinfer, inductor, native, triton" in err and err.count("\n") == 1


def test_benchmark_api_rejects_zero_rounds():
    from opir.bench import kernels, timing

    with pytest.raises(ValueError, match="rounds must be a whole number >= 1, got 0"):
        timing.interleave({"f": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="unknown provider"):
        kernels.run(providers=("bogus",), rounds=1)


def _missing(monkeypatch, module: str) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )


def test_plot_without_matplotlib_fails_before_the_benchmark(capsys, monkeypatch):
    from opir.bench import kernels

    _missing(monkeypatch, "matplotlib")
    monkeypatch.setattr(kernels, "run", lambda **kw: pytest.fail("ran the benchmark"))
    assert cli.main(["bench", "kernels", "--plot", "k.png"]) == 1
    assert (
        capsys.readouterr().err == "opir: error: --plot needs matplotlib: pip install "
        "'opir[bench]'\n"
    )


def test_bench_model_without_transformers_fails_before_the_benchmark(capsys, monkeypatch):
    _missing(monkeypatch, "transformers")
    assert cli.main(["bench", "model", "--short"]) == 1
    assert "opir bench model needs transformers: pip install 'opir[bench]'" in (
        capsys.readouterr().err
    )


def test_failed_build_is_one_error_message_without_traceback(capsys, monkeypatch):
    from opir.providers.cpu import build

    def fails(family="norms"):
        raise build.ProviderBuildError("building opir's 'cpu' provider failed: no compiler")

    monkeypatch.setattr(build, "load", fails)
    assert cli.main(["build"]) == 1
    err = capsys.readouterr().err
    assert err == "opir: error: building opir's 'cpu' provider failed: no compiler\n"


def _kernel_result(cpu_us: float, spread: float):
    from opir.bench import kernels

    medians = {kernels.COPY: 10.0, "native": 30.0, "cpu": cpu_us}
    return kernels.KernelResult(
        "rms_norm", "bf16", 16, 4096, 1 << 20, medians, dict.fromkeys(medians, spread)
    )


@pytest.mark.parametrize(
    ("cpu_us", "spread", "verdict"),
    [
        (9.0, 0.02, "met"),
        (10.5, 0.05, "not met, but within the measured noise"),  # 2.86x, ±10 %
        (15.0, 0.02, "NOT met"),  # 2x with ±4 % noise: a real miss
    ],
)
def test_kernel_verdicts_come_after_the_noise_floor(capsys, monkeypatch, cpu_us, spread, verdict):
    from opir.bench import kernels

    monkeypatch.setattr(kernels, "run", lambda **kw: [_kernel_result(cpu_us, spread)])
    assert cli.main(["bench", "kernels", "--providers", "native,cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    floor = out.index(f"noise floor: times vary by {spread:.0%} between rounds")
    target = out.index(f"target: norms: cpu >= 3x faster than native on every shape: {verdict}")
    assert floor < target
    if verdict != "met":
        assert ("(within noise)" in out) == (verdict != "NOT met")


def test_activation_target_is_its_own_verdict(capsys, monkeypatch):
    from opir.bench import kernels

    medians = {kernels.COPY: 10.0, "native": 30.0, "cpu": 40.0}  # cpu slower: a miss
    slow = kernels.KernelResult(
        "silu_and_mul",
        "bf16",
        16,
        3072,
        3 << 16,
        medians,
        dict.fromkeys(medians, 0.01),
        "activation",
    )
    monkeypatch.setattr(kernels, "run", lambda **kw: [_kernel_result(9.0, 0.01), slow])
    assert cli.main(["bench", "kernels", "--providers", "native,cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "target: norms: cpu >= 3x faster than native on every shape: met" in out
    assert "target: activations: cpu faster than native on every shape: NOT met" in out
    assert "silu_and_mul bf16 16x3072: 0.75x" in out
    assert "tokens x d" in out  # the activation table's own shape column


def test_kernels_json(capsys, monkeypatch):
    from opir.bench import kernels

    monkeypatch.setattr(kernels, "run", lambda **kw: [_kernel_result(15.0, 0.02)])
    assert cli.main(["bench", "kernels", "--providers", "native,cpu", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["noise_floor"]["median_spread"] == pytest.approx(0.02)
    assert document["results"][0]["median_us"]["cpu"] == 15.0
    target = next(t for t in document["targets"] if t["description"].startswith("norms: cpu >= 3x"))
    assert target["met"] is False and target["within_noise"] == [False]


def test_bench_dispatch_json(capsys):
    assert cli.main(["bench", "dispatch", "--rounds", "3", "--number", "20", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {r["mode"] for r in document} >= {"inference_mode", "grad on"}
    assert all(r["noise_floor_us"] >= 0 and "op(...)" in r["median_us"] for r in document[:2])


def test_compile_model_and_tp_json(capsys, monkeypatch):
    from opir.bench import compile as bench_compile
    from opir.bench import model, tp

    compiled = bench_compile.CompileResult(
        16, {"eager": 1.5}, {"eager": 1.2}, spread={"eager": 0.07}
    )
    monkeypatch.setattr(bench_compile, "run", lambda **kw: [compiled])
    ran = model.ModelResult("bf16", "forward 1 tokens", {"stock": 2.0}, {"stock": 1.0}, {})
    monkeypatch.setattr(model, "run", lambda **kw: [ran])
    monkeypatch.setattr(tp, "run", lambda **kw: {"all_reduce": 12.5})
    assert cli.main(["bench", "compile", "--short", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["median_ms"] == {"eager": 1.5}
    assert cli.main(["bench", "model", "--short", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["case"] == "forward 1 tokens"
    assert cli.main(["bench", "tp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["median_us"] == {"all_reduce": 12.5}


def test_compile_and_model_tables_state_the_noise_floor_first(capsys, monkeypatch):
    from opir.bench import compile as bench_compile
    from opir.bench import model

    compiled = bench_compile.CompileResult(
        16, {"eager": 1.5}, {"eager": 1.2}, spread={"eager": 0.07}
    )
    monkeypatch.setattr(bench_compile, "run", lambda **kw: [compiled])
    stock = {model.STOCK: 2.0}
    ran = model.ModelResult(
        "bf16", "forward 1 tokens", stock, {model.STOCK: 1.0}, {}, {model.STOCK: 0.3}
    )
    monkeypatch.setattr(model, "run", lambda **kw: [ran])
    assert cli.main(["bench", "compile", "--short"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.index("noise floor: times vary by 7% between rounds") < out.index("decoder stack")
    assert cli.main(["bench", "model", "--short"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.index("noise floor: times vary by 30% between rounds") < out.index("Qwen3")


def test_bench_compile_quant_table_and_json(capsys, monkeypatch):
    from opir.bench import quant_compile

    result = quant_compile.QuantCompileResult(
        16,
        {quant_compile.TORCH: 2.0, quant_compile.OPIR: 1.5},
        {quant_compile.TORCH: 1.0, quant_compile.OPIR: 0.75},
        {quant_compile.OPIR: {"rms_norm_dynamic_quant": 2}},
        {quant_compile.OPIR: ["dynamic_quant layers.0.attn: why"]},
        {quant_compile.OPIR: [("rms_norm_dynamic_quant", "cpu")]},
        {quant_compile.TORCH: 0.05, quant_compile.OPIR: 0.05},
    )
    monkeypatch.setattr(quant_compile, "run", lambda **kw: [result])
    assert cli.main(["bench", "compile", "--quant", "--short", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["fusions"] == {
        quant_compile.OPIR: {"rms_norm_dynamic_quant": 2}
    }
    assert cli.main(["bench", "compile", "--quant", "--short"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "W8A8 decoder" in out and "rms_norm_dynamic_quant" in out and "(0.75x)" in out
