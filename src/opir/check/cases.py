"""The inputs of the conformance grid, made from an op's own signature and input generator.

A :class:`Case` holds a function that builds the arguments, so every run gets
fresh tensors (providers may write into donated ones). Ops whose parameters
are the norm family's (``x``, ``x_residual``, ``gate``, ``weight``,
``epsilon``, ``variance_size``, ``weight_bias``, ``group_size``,
``norm_before_gate``) get random cases built parameter by parameter; any
other op gets its registered input generator's arguments, relaid out.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch

from opir.check.layouts import LAYOUTS, relayout
from opir.core.op import Op

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KNOWN_PARAMETERS = frozenset(
    {
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
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of an op: ``make()`` returns fresh arguments (all positional);
    ``donate``: call ``maybe_inplace``."""

    label: str
    make: Callable[[], tuple]
    donate: bool = False


def clone_args(args: tuple) -> tuple:
    """``args`` with every tensor cloned (same values, fresh contiguous memory)."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def describe(args: tuple) -> str:
    """Shapes, strides, dtypes and storage offsets of ``args``, for failure messages."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            dtype = str(a.dtype).removeprefix("torch.")
            out.append(f"T{list(a.shape)}/{a.stride()}/{dtype}+{a.storage_offset()}")
        else:
            out.append(repr(a))
    return ", ".join(out)


def sample(op: Op, *, dtype: torch.dtype, tokens: int, hidden: int, **extra: Any) -> tuple:
    """The op's generator's arguments, completed positionally."""
    args = op.sample_inputs(
        dtype=dtype, num_tokens=tokens, hidden_size=hidden, seed=tokens, **extra
    )
    return op.complete_args(tuple(args))


def takes(op: Op, **extra: Any) -> bool:
    """Whether the op's input generator accepts these extra keyword arguments."""
    try:
        op.sample_inputs(dtype=torch.float32, num_tokens=1, hidden_size=8, **extra)
    except TypeError:
        return False
    return True


VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("no key", {"has_key": False}),
    ("GPT-J style", {"is_neox_style": False}),
    ("partial rotary", {"partial": True}),
    ("3-D", {"three_d": True}),
    ("GQA heads", {"num_heads": 4, "num_kv_heads": 2}),
    ("fp32 cache", {"cache_dtype": torch.float32}),
    ("fp32 cos/sin", {"cos_dtype": torch.float32}),
    ("[b, s, h, d]", {"bshd": True}),
)
"""Input-generator options the grid tries when an op's generator takes them (the
rotary ops': optional key, styles, layouts, cache dtypes)."""


def variants(op: Op) -> list[tuple[str, dict[str, Any]]]:
    """The :data:`VARIANTS` the op's input generator accepts."""
    return [(label, extra) for label, extra in VARIANTS if takes(op, **extra)]


def grid_cases(op: Op, *, full: bool) -> Iterator[Case]:
    """Contiguous inputs over dtypes x shapes, then the weight dtype and generator
    variants."""
    shapes = (
        [(t, h) for t in (1, 7, 64) for h in (1, 7, 64, 769, 1024, 5125)]
        if full
        else [(1, 64), (7, 769)]
    )
    for dtype in DTYPES:
        for tokens, hidden in shapes:
            name = f"{_name(dtype)} {tokens}x{hidden}"
            yield Case(name, _sampler(op, dtype, tokens, hidden))
    weights = [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float16),
    ]
    if takes(op, weight_dtype=torch.float32):
        for dtype, wdtype in weights if full else weights[::2]:
            label = f"{_name(dtype)} x, {_name(wdtype)} weight"
            yield Case(label, _sampler(op, dtype, 7, 769, weight_dtype=wdtype))
    if takes(op, has_weight=False):
        for dtype in DTYPES if full else DTYPES[1:2]:
            yield Case(f"{_name(dtype)} no weight", _sampler(op, dtype, 7, 769, has_weight=False))
    for label, extra in variants(op):
        for dtype in DTYPES if full else DTYPES[:2]:
            yield Case(f"{_name(dtype)} {label}", _sampler(op, dtype, 7, 64, **extra))


def layout_cases(op: Op, *, full: bool) -> Iterator[Case]:
    """Every tensor argument of two or more dims (activations, gates) in each hostile
    layout, all at once (``full``: also one at a time)."""
    dtypes = DTYPES if full else DTYPES[:2]
    kinds = [k for k in LAYOUTS if k != "contiguous"]
    positions = _matrix_positions(op)
    for dtype in dtypes:
        for kind in kinds:
            for where in ([[p] for p in positions] if full else []) + [positions]:
                who = ",".join(op.sig.names[p] for p in where)
                yield Case(f"{_name(dtype)} {kind} {who}", _relaid(op, dtype, kind, where))
    if "weight" in op.sig.names:
        yield Case("non-contiguous weight", _strided_weight(op))


def empty_cases(op: Op, *, full: bool) -> Iterator[Case]:
    """Zero rows (2-D and 3-D)."""
    for dtype in DTYPES if full else DTYPES[:2]:
        yield Case(f"{_name(dtype)} 0x64", _sampler(op, dtype, 0, 64))
        yield Case(f"{_name(dtype)} 2x0x64", _relaid(op, dtype, "three_d", None, tokens=0))


def bad_cases(op: Op) -> Iterator[Case]:
    """Arguments the contract rejects (the runner keeps those native raises on)."""
    names = op.sig.names

    def mutate(change: Callable[[list], None]) -> Callable[[], tuple]:
        def make() -> tuple:
            args = list(sample(op, dtype=torch.float32, tokens=3, hidden=64))
            change(args)
            return tuple(args)

        return make

    first = op.activation_positions[0] if op.activation_positions else 0

    def integer_x(args: list) -> None:
        args[first] = args[first].to(torch.int32)

    yield Case(f"integer {names[first]}", mutate(integer_x))
    for i in op.activation_positions[1:]:

        def wider(args: list, i: int = i) -> None:
            args[i] = torch.randn(args[i].shape[0], args[i].shape[-1] + 1).to(args[i].dtype)

        yield Case(f"{names[i]} of another shape", mutate(wider))
    for i, name in enumerate(names):
        if name == "weight":

            def long_weight(args: list, i: int = i) -> None:
                args[i] = torch.ones(args[first].shape[-1] + 1)

            def integer_weight(args: list, i: int = i) -> None:
                args[i] = torch.ones(args[first].shape[-1], dtype=torch.int32)

            yield Case("weight one longer than x's last dim", mutate(long_weight))
            yield Case("integer weight", mutate(integer_weight))
        elif name == "epsilon":
            for value in (None, "1e-6"):

                def bad_epsilon(args: list, i: int = i, value: Any = value) -> None:
                    args[i] = value

                yield Case(f"epsilon={value!r}", mutate(bad_epsilon))
        elif name in ("variance_size", "group_size"):
            for delta in (1, 3) if name == "variance_size" else (3,):

                def too_big(args: list, i: int = i, delta: int = delta) -> None:
                    args[i] = args[first].shape[-1] + delta

                yield Case(f"{name}=hidden+{delta}", mutate(too_big))

            def zero(args: list, i: int = i) -> None:
                args[i] = 0

            yield Case(f"{name}=0", mutate(zero))


def inplace_cases(op: Op, *, full: bool) -> Iterator[Case]:
    """Donations: fresh tensors, one tensor passed twice, overlapping and
    self-overlapping views of one buffer, row-strided views."""
    positions = list(op.activation_positions)
    for dtype in DTYPES if full else DTYPES[:2]:
        name = _name(dtype)
        yield Case(f"{name} fresh", _sampler(op, dtype, 7, 64))
        yield Case(f"{name} one tensor for every activation", _same_tensor(op, dtype, positions))
        yield Case(f"{name} overlapping views of one buffer", _overlapping(op, dtype, positions))
        yield Case(f"{name} disjoint views of one buffer", _overlapping(op, dtype, positions, None))
        yield Case(f"{name} expanded rows", _relaid(op, dtype, "expand", positions[:1]))
        yield Case(f"{name} row-strided", _relaid(op, dtype, "strided_rows", positions))
        for label, extra in variants(op):
            yield Case(f"{name} {label}", _sampler(op, dtype, 7, 64, **extra))


def random_case(op: Op, seed: int) -> tuple[tuple, bool]:
    """Deterministic ``(args, invalid)`` for ``seed``; ``invalid``: arguments were broken
    on purpose (native may or may not reject them)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    names = op.sig.names
    dtype = rng.choice(DTYPES)
    tokens = rng.choice([0, 1, 1, 2, 3, 7, 16, 33])
    hidden = rng.choice([1, 2, 7, 8, 16, 48, 63, 64, 96, 130])
    if "group_size" in names:
        hidden = rng.choice([8, 16, 48, 64, 96, 0])
    kind = rng.choice(LAYOUTS)
    if not set(names) <= KNOWN_PARAMETERS:  # an op this grid does not know: its own generator
        extra: dict[str, Any] = {}
        for _, options in variants(op):
            if rng.random() < 0.3:
                extra.update(options)
        args = list(sample(op, dtype=dtype, tokens=tokens, hidden=hidden, **extra))
        for i in op.activation_positions:
            if args[i] is not None:
                args[i] = relayout(args[i], kind, rng)
        return tuple(args), False
    invalid = rng.random() < 0.1
    values: dict[str, Any] = {"x": relayout(_rand((tokens, hidden), dtype, gen), kind, rng)}
    shape = values["x"].shape
    if "x_residual" in names:
        optional = _optional(op, "x_residual") and rng.random() < 0.2
        residual = relayout(_rand((tokens, hidden), dtype, gen), rng.choice(LAYOUTS), rng)
        values["x_residual"] = None if optional else _fit(residual, shape, dtype, gen)
    if "gate" in names:
        gdtype = rng.choice([dtype, dtype, *DTYPES, None])
        gate = None
        if gdtype is not None:
            gate = relayout(_rand((tokens, hidden), gdtype, gen), rng.choice(LAYOUTS), rng)
            gate = _fit(gate, shape, gdtype, gen)
        values["gate"] = gate
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


# --------------------------------------------------------------------------- helpers


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _rand(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(dtype)


def _fit(t: torch.Tensor, shape: torch.Size, dtype: torch.dtype, gen: torch.Generator):
    """``t``, or fresh values of ``shape`` when its layout changed the shape (three_d)."""
    return t if t.shape == shape else _rand(tuple(shape), dtype, gen)


def _optional(op: Op, name: str) -> bool:
    """Whether the op's parameter ``name`` accepts None."""
    annotation = op.signature.parameters[name].annotation
    return "None" in str(annotation) or "Optional" in str(annotation)


def _matrix_positions(op: Op) -> list[int]:
    """Positions of the generator's tensor arguments with two or more dims."""
    args = sample(op, dtype=torch.float32, tokens=3, hidden=8)
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() >= 2]


def _sampler(op: Op, dtype: torch.dtype, tokens: int, hidden: int, **extra: Any):
    return lambda: sample(op, dtype=dtype, tokens=tokens, hidden=hidden, **extra)


def _relaid(op: Op, dtype: torch.dtype, kind: str, where, *, tokens: int = 7):
    """Generator inputs with the activations at ``where`` (all when None) in layout ``kind``."""

    def make() -> tuple:
        args = list(sample(op, dtype=dtype, tokens=tokens, hidden=64))
        rng = random.Random(0)
        for i in op.activation_positions if where is None else where:
            args[i] = relayout(args[i], kind, rng)
        return tuple(args)

    return make


def _strided_weight(op: Op):
    def make() -> tuple:
        args = list(sample(op, dtype=torch.float32, tokens=7, hidden=64))
        i = op.sig.names.index("weight")
        if isinstance(args[i], torch.Tensor):
            w = args[i]
            args[i] = torch.zeros(w.shape[0] * 2, dtype=w.dtype)[::2].copy_(w)
        return tuple(args)

    return make


def _same_tensor(op: Op, dtype: torch.dtype, positions: list[int]):
    """Every activation is the first one, or (another shape, e.g. rotary's key with
    fewer heads) a view of the first one's memory."""

    def make() -> tuple:
        args = list(sample(op, dtype=dtype, tokens=7, hidden=64))
        first = args[positions[0]]
        for i in positions[1:]:
            a = args[i]
            if a is None or a.dtype != first.dtype:
                continue
            if a.shape == first.shape:
                args[i] = first
            elif first.is_contiguous() and a.numel() <= first.numel():
                args[i] = first.reshape(-1)[: a.numel()].view(a.shape)
        return tuple(args)

    return make


def _overlapping(op: Op, dtype: torch.dtype, positions: list[int], step: int | None = 32):
    """The 2-D [7, w] activations as column windows of one buffer: activation k starts
    ``k * step`` columns in (overlapping when ``step`` is less than the widths), or
    (``step=None``) right after the previous one (disjoint column blocks of the same
    rows, as the q and k views of a fused qkv buffer are)."""

    def make() -> tuple:
        args = list(sample(op, dtype=dtype, tokens=7, hidden=64))
        chosen = [
            i
            for i in positions
            if args[i] is not None and args[i].dim() == 2 and args[i].shape[0] == 7
        ]
        starts, at = [], 0
        for k, i in enumerate(chosen):
            starts.append(at if step is None else k * step)
            at += args[i].shape[1]
        width = max((s + args[i].shape[1] for s, i in zip(starts, chosen, strict=True)), default=0)
        buffer = torch.randn(7, width, generator=torch.Generator().manual_seed(1)).to(dtype)
        for start, i in zip(starts, chosen, strict=True):
            args[i] = buffer[:, start : start + args[i].shape[1]]
        return tuple(args)

    return make
