"""Run by test_cache.py in a fresh process: compile, run, print what happened as JSON.

argv: <dir holding helper.py> <donating|functional>. The op ``cache_helper_op``'s
native function calls ``helper.scale`` from another module, so a change to
helper.py must reach a new process served from a warm Inductor cache.
"""

from __future__ import annotations

import json
import sys

import torch

import opir
from opir.ops import fused_add_rms_norm

sys.path.insert(0, sys.argv[1])
import helper


@opir.register_op(name="cache_helper_op")
def helper_op(x: torch.Tensor) -> torch.Tensor:
    return helper.scale(x)


def make(donate: bool):
    call = fused_add_rms_norm.maybe_inplace if donate else fused_add_rms_norm

    def body(x, r, w):
        return call(x, r, w, 1e-6)

    return body


g = torch.Generator().manual_seed(0)
x, r = (torch.randn(4, 32, generator=g) for _ in range(2))
w = torch.rand(32, generator=g) + 0.5
x0, r0 = x.clone(), r.clone()
cpu = {"fused_add_rms_norm": ["cpu"]}
compiled = opir.compile(make(sys.argv[2] == "donating"), options={"priority": cpu})
out, res = compiled(x, r, w)
expected = fused_add_rms_norm.native(x0, r0, w, 1e-6)
scaled = opir.compile(helper_op)
report = compiled.opir_report.last
print(
    json.dumps(
        {
            "inputs_unchanged": torch.equal(x, x0) and torch.equal(r, r0),
            "correct": torch.allclose(out, expected[0]) and torch.allclose(res, expected[1]),
            "helper": scaled(torch.ones(2)).tolist(),
            "from_cache": report.from_cache,
            "providers": [e.provider for e in report.lowered],
            "clones_removed": report.clones_removed,
        }
    )
)
