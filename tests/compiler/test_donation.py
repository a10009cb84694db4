"""Donation under compile: reading a donated tensor afterwards, through any alias,
is a DonationError that reaches the user as itself (aliasing from storages)."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.compiler import DonationError
from opir.ops import fused_add_rms_norm

pytestmark = pytest.mark.slow

# Each reads the donated x through an alias of its storage.
ALIASES = {
    "movedim": lambda x: x.movedim(0, 1),
    "swapaxes": lambda x: x.swapaxes(0, 1),
    "mT": lambda x: x.mT,
    "diagonal": lambda x: x.diagonal(),
    "unfold": lambda x: x.unfold(1, 2, 2),
    "expand_as": lambda x: x[0].expand_as(x),
    "tensor_split": lambda x: x.tensor_split(2, dim=1)[1],
    "split_with_sizes": lambda x: x.split_with_sizes([8, 8], dim=1)[0],
    "data": lambda x: x.data,
    "view_chain": lambda x: x.view(-1)[3:].view(-1, 1),
}


def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend=opir.backend(inductor=False), dynamic=False)


def _inputs():
    return torch.randn(4, 16), torch.randn(4, 16)


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("made", ["before", "after"])
def test_reading_a_donated_tensor_through_an_alias_is_an_error(alias, made):
    make = ALIASES[alias]

    def body(x, r):
        early = make(x) if made == "before" else None
        out, _ = fused_add_rms_norm.maybe_inplace(x, r, None, 1e-6)
        late = early if made == "before" else make(x)
        return out.sum() + late.sum()

    with pytest.raises(DonationError, match=r"'x' is donated to fused_add_rms_norm\.maybe_inplace"):
        _compile(body)(*_inputs())


def test_returning_a_donated_input_is_an_error():
    def body(x, r):
        out, _ = fused_add_rms_norm.maybe_inplace(x, r, None, 1e-6)
        return out, r

    with pytest.raises(DonationError, match=r"'r' is donated.*the graph's output"):
        _compile(body)(*_inputs())


def test_aliases_read_before_the_call_are_fine_and_the_advice_works():
    def reads_before(x, r):
        total = x.mT.sum()  # read before the donation: fine
        out, res = fused_add_rms_norm.maybe_inplace(x, r, None, 1e-6)
        return out + total, res

    x, r = _inputs()
    expected = fused_add_rms_norm.native(x, r, None, 1e-6)
    out, res = _compile(reads_before)(x.clone(), r.clone())
    torch.testing.assert_close(out, expected[0] + x.sum())
    torch.testing.assert_close(res, expected[1])

    def functional(x, r):  # the error's advice: the functional op, then reading x is fine
        out, _ = fused_add_rms_norm(x, r, None, 1e-6)
        return out + x.mT.mT

    x0, r0 = x.clone(), r.clone()
    got = _compile(functional)(x, r)
    torch.testing.assert_close(got, expected[0] + x0)
    assert torch.equal(x, x0) and torch.equal(r, r0)


def test_error_reaches_plain_torch_compile_with_inductor():
    norm = opir.layers.RMSNorm(16)

    def misuse(x, residual):
        out, _ = norm(x, residual)  # donates x
        return out + x.movedim(0, 1).movedim(0, 1)

    torch._dynamo.reset()
    compiled = torch.compile(misuse, backend=opir.backend())
    with pytest.raises(DonationError, match="Clone it before the call"):
        compiled(*_inputs())


def test_an_expanded_donated_input_keeps_its_clone():
    """Expected: RMSNorm(x, residual) with an expanded x gives the eager answer under
    opir.compile, as eagerly. Actual: clone elimination dropped x's clone (x is a
    donated input) and the cpu kernel refused to write x in place ("x and residual
    alias or overlap")."""
    norm = opir.layers.RMSNorm(16)
    x, r = torch.randn(1, 16).expand(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        ref = norm(x, r.clone())
        torch._dynamo.reset()
        options = {"inductor": False, "priority": {"fused_add_rms_norm": ["cpu"]}}
        compiled = opir.compile(norm, options=options)
        out = compiled(x, r.clone())
    torch.testing.assert_close(out, ref)
    (graph,) = compiled.opir_report.graphs
    assert graph.clones_kept >= 1
