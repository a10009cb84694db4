"""Conformance fuzz: every op on every provider over random layouts, against native.

For each registered op (except the collective ``all_reduce_rms_norm``) and each
provider supported here, random cases are drawn from a seeded RNG: odd sizes,
0/1 tokens, strided/transposed/offset/overlapping (expand, as_strided) inputs,
3-D non-collapsible views, mixed dtypes (weight or gate dtype != x's,
weight_bias) and some invalid arguments. Each case runs through the op with
``op.set_priority([provider])`` (and ``maybe_inplace`` for in-place ops) and
must match native within ``op.tolerance``, or raise the same exception type as
native. ``OPIR_FUZZ_CASES=N`` sets the cases per (op, provider) (default 40);
``OPIR_FUZZ_SEED`` the base seed. The ``inductor`` provider (which compiles)
gets a handful of cases, as does an ``opir.compile(..., inductor=False)`` leg.
"""

from __future__ import annotations

import inspect
import os
import random

import pytest
import torch

import opir

CASES = int(os.environ.get("OPIR_FUZZ_CASES", "40"))
SEED = int(os.environ.get("OPIR_FUZZ_SEED", "1234"))
COMPILING_CASES = 3
SKIP_OPS = {"all_reduce_rms_norm"}  # needs a process group; covered by the TP tests
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _pairs():
    for name, op in sorted(opir.registry.items()):
        if name in SKIP_OPS:
            continue
        for provider, impl in op.impls.items():
            if impl.supported:
                yield pytest.param(name, provider, id=f"{name}-{provider}")


# --------------------------------------------------------------------------- layouts


def _layout(values: torch.Tensor, kind: str, rng: random.Random) -> torch.Tensor:
    """A tensor equal to ``values`` (or, for overlapping kinds, a new one) in layout ``kind``."""
    shape, dtype = values.shape, values.dtype
    if kind == "contiguous" or values.dim() < 2:
        return values.clone()
    t, h = shape[-2], shape[-1]
    lead = shape[:-2]
    if kind == "strided_rows":
        wide = torch.zeros(*lead, t, h + rng.randint(1, 9), dtype=dtype)
        wide[..., :h] = values
        return wide[..., :h]
    if kind == "transposed":  # last dim not contiguous
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "offset":
        pad = rng.randint(1, 17)
        flat = torch.zeros(values.numel() + pad, dtype=dtype)
        flat[pad:] = values.reshape(-1)
        return flat[pad:].view(shape)
    if kind == "expand":  # every row is the same memory
        return values[..., :1, :].expand(shape)
    if kind == "as_strided":  # rows overlap by half a row
        step = max(1, h // 2)
        base = values.reshape(-1)[: (t - 1) * step + h].clone() if t else values.reshape(-1)
        if base.numel() < (t - 1) * step + h:
            base = torch.randn(max(0, (t - 1) * step + h)).to(dtype)
        lead_n = 1
        for s in lead:
            lead_n *= s
        if lead_n != 1:
            return values.clone()
        return base.as_strided(shape, (*([0] * len(lead)), step, 1))
    if kind == "three_d" and values.dim() == 2:
        buf = torch.zeros(2, t + 2, h + 3, dtype=dtype)
        buf[0, :t, :h] = values
        buf[1, :t, :h] = values
        return buf[:, :t, :h]
    return values.clone()


LAYOUTS = ["contiguous", "strided_rows", "transposed", "offset", "expand", "as_strided", "three_d"]


# --------------------------------------------------------------------------- cases


def _rand(shape, dtype, gen):
    return torch.randn(shape, generator=gen).to(dtype)


def _case(op: opir.Op, seed: int) -> tuple[tuple, bool]:
    """Deterministic (args, expect_invalid) for ``seed``: rebuilt for every call."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    names = list(inspect.signature(op.native).parameters)
    dtype = rng.choice(DTYPES)
    tokens = rng.choice([0, 1, 1, 2, 3, 7, 16, 33])
    hidden = rng.choice([1, 2, 7, 8, 16, 48, 63, 64, 96, 130])
    if "group_size" in names:
        hidden = rng.choice([8, 16, 48, 64, 96, 0])
    kind = rng.choice(LAYOUTS)
    invalid = rng.random() < 0.1
    values: dict = {}
    known = {
        "x",
        "x_residual",
        "gate",
        "weight",
        "epsilon",
        "variance_size",
        "weight_bias",
        "group_size",
        "norm_before_gate",
    }
    if not set(names) <= known:  # an op this fuzzer does not know: its own generator
        args = list(op.sample_inputs(dtype=dtype, num_tokens=tokens, hidden_size=hidden, seed=seed))
        for i in op.activation_positions:
            args[i] = _layout(args[i], kind, rng)
        return tuple(args), False
    x = _rand((tokens, hidden), dtype, gen)
    values["x"] = _layout(x, kind, rng)
    if "x_residual" in names:
        values["x_residual"] = _layout(
            _rand((tokens, hidden), dtype, gen), rng.choice(LAYOUTS), rng
        )
        if values["x_residual"].shape != values["x"].shape:
            values["x_residual"] = _rand(values["x"].shape, dtype, gen)
    if "gate" in names:
        gdtype = rng.choice([dtype, dtype, *DTYPES, None])
        values["gate"] = (
            None
            if gdtype is None
            else _layout(_rand((tokens, hidden), gdtype, gen), rng.choice(LAYOUTS), rng)
        )
        if values["gate"] is not None and values["gate"].shape != values["x"].shape:
            values["gate"] = _rand(values["x"].shape, gdtype, gen)
    wdtype = rng.choice([dtype, dtype, *DTYPES, None])
    w = None if wdtype is None else (1 + 0.1 * torch.randn(hidden, generator=gen)).to(wdtype)
    if w is not None and rng.random() < 0.2:
        w = torch.zeros(hidden * 2, dtype=wdtype)[::2].copy_(w)  # non-contiguous weight
    values["weight"] = w
    values["epsilon"] = rng.choice([1e-6, 1e-5, 0.1])
    if "variance_size" in names:
        values["variance_size"] = rng.choice([None, None, max(1, hidden // 2), hidden])
    if "weight_bias" in names:
        values["weight_bias"] = rng.choice([0.0, 0.0, 1.0, -0.5])
    if "group_size" in names:
        divisors = [g for g in (1, 4, 8, 16) if hidden and hidden % g == 0]
        values["group_size"] = rng.choice([None, *divisors])
    if "norm_before_gate" in names:
        values["norm_before_gate"] = rng.random() < 0.5
    if invalid:
        what = rng.choice(["weight", "epsilon", "size"])
        if what == "weight":
            values["weight"] = torch.ones(hidden + 1, dtype=dtype)
        elif what == "epsilon":
            values["epsilon"] = rng.choice([None, "1e-6"])
        elif "variance_size" in names:
            values["variance_size"] = hidden + 1
        elif "group_size" in names:
            values["group_size"] = hidden + 3
        else:
            values["weight"] = torch.ones(hidden + 2, dtype=dtype)
    return tuple(values[n] for n in names), invalid


def _same(op, got, expected, args):
    tol = op.tolerance(args[0].dtype)
    torch.testing.assert_close(got, expected, atol=tol.atol, rtol=tol.rtol, equal_nan=True)


def _check(op, provider, seed, inplace):
    args, _ = _case(op, seed)
    try:
        expected = op.native(*_case(op, seed)[0])
    except Exception as e:  # invalid input: the provider must raise the same type
        with pytest.raises(type(e)), op.set_priority([provider]):
            (op.maybe_inplace if inplace else op)(*args)
        return
    with op.set_priority([provider]):
        got = (op.maybe_inplace if inplace else op)(*args)
    _same(op, got, expected, args)


@pytest.mark.parametrize(("name", "provider"), list(_pairs()))
def test_fuzz_against_native(name, provider):
    op = opir.registry[name]
    cases = COMPILING_CASES if provider == "inductor" else CASES
    for i in range(cases):
        seed = SEED + 7919 * i
        for inplace in (False, True) if op.allow_inplace else (False,):
            try:
                _check(op, provider, seed, inplace)
            except Exception as e:
                raise AssertionError(
                    f"fuzz case failed: op={name} provider={provider} inplace={inplace} "
                    f"seed={seed} (rerun: OPIR_FUZZ_SEED={seed} OPIR_FUZZ_CASES=1); "
                    f"args: {_describe(_case(op, seed)[0])}\n{type(e).__name__}: {e}"
                ) from e


def _describe(args) -> str:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(f"T{list(a.shape)}/{a.stride()}/{str(a.dtype)[6:]}+{a.storage_offset()}")
        else:
            out.append(repr(a))
    return ", ".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(opir.registry) if n not in SKIP_OPS])
def test_fuzz_under_opir_compile(name):
    op = opir.registry[name]
    for i in range(COMPILING_CASES):
        seed = SEED + 104729 * i
        args, invalid = _case(op, seed)
        if invalid:
            continue
        try:
            expected = op.native(*_case(op, seed)[0])
        except Exception:
            continue
        torch._dynamo.reset()
        compiled = opir.compile(lambda *a: op(*a), options={"inductor": False})
        _same(op, compiled(*args), expected, args)
