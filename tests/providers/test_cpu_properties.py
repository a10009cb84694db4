"""Property-based: the cpu kernels match native on arbitrary small layouts."""

from __future__ import annotations

import torch
from conformance import assert_matches_native
from hypothesis import given, settings
from hypothesis import strategies as st

from opir.ops import fused_add_rms_norm, rms_norm, rms_norm_gated

DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


@st.composite
def cases(draw):
    op = draw(st.sampled_from([rms_norm, fused_add_rms_norm, rms_norm_gated]))
    dtype = draw(DTYPES)
    tokens = draw(st.integers(0, 40))
    hidden = draw(st.integers(1, 300))
    weight = draw(st.sampled_from(["same", "fp32", "none"]))
    kwargs = {"has_weight": weight != "none"}
    if weight == "fp32":
        kwargs["weight_dtype"] = torch.float32
    if op is rms_norm_gated:
        divisors = [d for d in range(1, hidden + 1) if hidden % d == 0]
        kwargs["group_size"] = draw(st.sampled_from([None, *divisors]))
        kwargs["norm_before_gate"] = draw(st.booleans())
    else:
        kwargs["variance_size"] = draw(st.one_of(st.none(), st.integers(1, hidden)))
    seed = draw(st.integers(0, 2**16))
    args = op.sample_inputs(dtype=dtype, num_tokens=tokens, hidden_size=hidden, seed=seed, **kwargs)
    pad = draw(st.integers(0, 7))  # rows taken from a wider buffer (0: contiguous)
    leading = draw(st.sampled_from([(), (2,)]))  # optional extra leading dim
    n_activations = 1 if op is rms_norm else 2

    def layout(t: torch.Tensor) -> torch.Tensor:
        t = t.expand(*leading, *t.shape).clone() if leading else t
        wide = torch.zeros(*t.shape[:-1], t.shape[-1] + pad, dtype=t.dtype)
        wide[..., : t.shape[-1]] = t
        return wide[..., : t.shape[-1]]

    return op, tuple(layout(a) if i < n_activations else a for i, a in enumerate(args))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_cpu_matches_native_on_random_layouts(case):
    op, args = case
    assert_matches_native(op, "cpu", args)
