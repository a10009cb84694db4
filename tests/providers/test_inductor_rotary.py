"""The inductor provider on the rotary ops: bit-identical to native in 16-bit (it
compiles them with emulate_precision_casts), positions range-checked before the
compiled code runs."""

from __future__ import annotations

import pytest
import torch

import opir
from opir.ops import qk_norm_rope, rotary_embedding, rotary_pos_emb


def _inductor(op, args):
    with op.set_priority(["inductor"]), opir.strict():
        return op(*args)


@pytest.mark.parametrize("op", [rotary_embedding, qk_norm_rope])
def test_out_of_range_positions_raise_before_compiling(op):
    """An out-of-range gather in Inductor's CPU code would abort the process; the
    provider runs the range check eagerly first."""
    args = list(op.sample_inputs(dtype=torch.float32, num_tokens=4, max_position=16))
    for bad in (16, -1):
        args[0] = torch.tensor([0, 1, bad, 2])
        with pytest.raises(ValueError, match=r"positions must be in \[0, 16\)"):
            _inductor(op, args)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("op", "dtype", "variant"),
    [
        (rotary_embedding, torch.bfloat16, {"has_key": False, "is_neox_style": False}),
        (qk_norm_rope, torch.bfloat16, {"partial": True}),
        (rotary_pos_emb, torch.bfloat16, {}),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_bit_identical_to_native_in_16_bit(op, dtype, variant):
    """One compile per case (slow on a busy box): qk_norm_rotary_pos_emb is rms_norm's
    and rotary_pos_emb's expressions, both covered here."""
    for tokens in (7, 33):  # one compile serves both (dynamic shapes)
        args = op.sample_inputs(dtype=dtype, num_tokens=tokens, **variant)
        got, want = _inductor(op, args), op.native(*args)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
