"""What makes a compiled graph stale, in one process and across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opir
from opir.compiler.cache import MAX_VARIANTS
from opir.ops import fused_add_rms_norm

pytestmark = pytest.mark.slow
CPU = {"fused_add_rms_norm": ["cpu"]}


def _body(donate: bool):
    call = fused_add_rms_norm.maybe_inplace if donate else fused_add_rms_norm

    def body(x, r, w):
        return call(x, r, w, 1e-6)

    return body


def test_functional_call_never_reuses_a_donating_graph_in_one_process():
    x, r, w = torch.randn(4, 32), torch.randn(4, 32), torch.rand(32)
    torch._dynamo.reset()
    donating = opir.compile(_body(True), options={"priority": CPU})
    donating(x.clone(), r.clone(), w)
    assert donating.opir_report.last.clones_removed == 2  # writes into the donated inputs
    torch._dynamo.reset()
    functional = opir.compile(_body(False), options={"priority": CPU})
    x0, r0 = x.clone(), r.clone()
    out, res = functional(x, r, w)
    assert torch.equal(x, x0) and torch.equal(r, r0), "the functional call overwrote its inputs"
    torch.testing.assert_close((out, res), fused_add_rms_norm.native(x0, r0, w, 1e-6))


def _child(tmp_path: Path, mode: str) -> dict:
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src")]),
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cache_child.py")), str(tmp_path), mode],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_across_processes_the_key_is_the_lowered_graph(tmp_path):
    """Process 1 compiles the donating body; process 2, on the same warm Inductor
    cache, compiles the functional one (must not overwrite its inputs) after a
    helper module the op's native function calls changed (must run the new code)."""
    (tmp_path / "helper.py").write_text("def scale(x):\n    return x * 2\n")
    first = _child(tmp_path, "donating")
    assert first["correct"] and first["helper"] == [2.0, 2.0]
    assert first["providers"] == ["cpu"] and first["clones_removed"] == 2
    (tmp_path / "helper.py").write_text("def scale(x):\n    return x * 3\n")
    second = _child(tmp_path, "functional")
    assert second["inputs_unchanged"] and second["correct"]
    assert second["helper"] == [3.0, 3.0]
    third = _child(tmp_path, "functional")  # warm for this graph: served from the cache
    assert third["from_cache"] and third["inputs_unchanged"] and third["correct"]
    assert third["providers"] == ["cpu"]  # the report is complete even on a cache hit


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _adding(i: int):
    def impl(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + i

    return impl


def test_only_a_change_to_an_op_in_the_graph_recompiles_and_variants_are_bounded(make_op):
    op = make_op(_double)
    for i in range(MAX_VARIANTS + 2):
        op.register_impl(f"spy{i}")(_adding(i))
    backend = opir.backend(inductor=False)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: op(x) * 3, backend=backend)
    x = torch.randn(3, 8)
    expected = x * 2
    compiled(x)
    (variants,) = backend.variants
    try:
        fused_add_rms_norm.set_default(["native"])  # another op: no recompile
        op.set_default([])  # the same (empty) user priority again: no recompile
        torch.testing.assert_close(compiled(x), expected * 3)
        assert variants.compiles == 1 and len(backend.report.graphs) == 1
        for i in range(MAX_VARIANTS + 2):  # each priority of this op lowers differently
            with opir.priority({op.name: [f"spy{i}"]}):
                torch.testing.assert_close(compiled(x), (expected + i) * 3)
        assert variants.compiles == MAX_VARIANTS + 3
        assert len(variants) == MAX_VARIANTS  # least recently used variants were dropped
        with opir.priority({op.name: [f"spy{MAX_VARIANTS + 1}"]}):  # most recent: reused
            compiled(x)
        assert variants.compiles == MAX_VARIANTS + 3
    finally:
        fused_add_rms_norm.set_default([])


def test_a_re_registered_impl_recompiles_even_when_its_function_id_is_reused(make_op):
    """Expected: after unregister_impl + register_impl (a re-run notebook cell) the
    compiled function runs the new code. Actual: variants were keyed on
    ``id(impl.fn)``; a freed function's id was reused and the old code ran."""
    op = make_op(_double)
    fn = _adding(4)
    op.register_impl("cell")(fn)
    op.set_default(["cell"])
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: op(x), backend=opir.backend(inductor=False))
    x = torch.zeros(2)
    torch.testing.assert_close(compiled(x), x + 4)
    op.unregister_impl("cell")
    # The new cell's function at the old one's address, as CPython reuses a
    # freed id: here deterministically, the same object with new behaviour.
    fn.__closure__[0].cell_contents = 5
    op.register_impl("cell")(fn)
    op.set_default(["cell"])
    torch.testing.assert_close(op(x), x + 5)
    torch.testing.assert_close(compiled(x), x + 5)


def test_each_compiled_object_keeps_its_own_report():
    model = opir.layers.RMSNorm(8)
    torch._dynamo.reset()
    a = opir.compile(model, options={"inductor": False})
    b = opir.compile(model, options={"inductor": False, "priority": {"rms_norm": ["cpu"]}})
    x = torch.randn(2, 8)
    a(x)
    b(x)
    assert a.opir_report is not b.opir_report
    assert a.opir_report.providers() == [("rms_norm", "native")]
    assert b.opir_report.providers() == [("rms_norm", "cpu")]
    assert not hasattr(model, "opir_report")
    assert opir.compiler.report_of(b) is b.opir_report
