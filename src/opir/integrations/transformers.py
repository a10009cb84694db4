"""Put a Hugging Face ``transformers`` model's RMSNorm family on opir, in place.

``apply(model)`` finds every norm-like module (class name ending in ``RMSNorm`` or
``RMSNormGated``, a class ``transformers``/``kernels`` marks with the hub layer
name ``RMSNorm``/``RMSNormGated``, or any module with a ``weight`` Parameter and a
float ``variance_epsilon``) and replaces it, under every parent that holds it,
with an opir layer that shares the module's own parameter, buffer and hook
dictionaries: weights loaded later (also ``load_state_dict(assign=True)``),
``.to()`` conversions and hooks reach both, and ``state_dict`` is unchanged.

Nothing is replaced on trust. The candidate opir computations are checked
against the class's own ``forward`` function (called directly, so no hook runs)
on a deep copy with random parameters and buffers, with priority ``native``.
Each **envelope key** -- (x dtype, second input's dtype or None, weight dtype,
rank, device type) -- is verified on its own and only when every probe case of
that key ran on both and matched bit for bit; inputs are compared before and
after, so neither side may modify them. The applied layer computes with opir only
inside its verified keys; a key never seen (after ``.to(bfloat16)``, on another
device) is verified on first use (eagerly; under ``torch.compile`` it runs the
original), and outside, or for argument forms never probed, the original class's
``forward`` runs on the original module. ``transformers`` itself is not imported.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

import opir
from opir.core.config import resolve_config
from opir.integrations import _rotary
from opir.integrations._rotary import AppliedRotary
from opir.layers import GemmaRMSNorm, RMSNorm, RMSNormGated
from opir.ops import (
    fused_add_rms_norm,
    gelu_and_mul,
    gelu_mul,
    rms_norm,
    rms_norm_gated,
    silu_and_mul,
    silu_mul,
)

_HUB_NAMES = ("RMSNorm", "RMSNormGated")
_NATIVE = {op: ["native"] for op in ("rms_norm", "fused_add_rms_norm", "rms_norm_gated")}
_RANKS = (1, 2, 3, 4)
_LEADING: dict[int, list[tuple[int, ...]]] = {
    1: [()],
    2: [(3,), (1,)],
    3: [(2, 5), (1, 1)],
    4: [(2, 3, 2)],
}
_PLAIN = (int, float, bool, str, type(None), torch.dtype)
# Module state the applied layer shares with the original (by reference, not copied).
_SHARED = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)

Key = tuple  # (x dtype, other dtype | None, weight dtype | None, rank, device, width, autocast)
_FINFO_EPS = "finfo"  # an eps of None in torch.nn.RMSNorm: torch.finfo(x.dtype).eps


@dataclass
class ApplyReport:
    """What ``apply`` did: per original class, the count of modules replaced and by
    which opir layer; per class left alone, the count and the reason. Gated MLPs
    replaced with ``activations=True`` are in ``activations`` (class -> count, opir op,
    all within the op's tolerance, not bit-exact); without it, the MLP classes found are
    counted in ``activations_left_alone`` and the report says why in one line."""

    replaced: dict[str, tuple[int, str]] = field(default_factory=dict)
    left_alone: dict[str, tuple[int, str]] = field(default_factory=dict)
    activations: dict[str, tuple[int, str]] = field(default_factory=dict)
    activations_left_alone: dict[str, int] = field(default_factory=dict)
    rotary: dict[str, tuple[int, str]] = field(default_factory=dict)
    rotary_left_alone: dict[str, tuple[int, str]] = field(default_factory=dict)
    fused_qk_norm: dict[str, int] = field(default_factory=dict)
    fused_qk_norm_left_alone: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def total_replaced(self) -> int:
        return sum(n for n, _ in self.replaced.values()) + sum(
            n for n, _ in self.activations.values()
        )

    def _add(self, table: dict, cls: str, what: str) -> None:
        count = table.get(cls, (0, what))[0]
        table[cls] = (count + 1, what)

    def _activations_line(self) -> str | None:
        if not self.activations_left_alone:
            return None
        found = ", ".join(f"{c}: {n}" for c, n in self.activations_left_alone.items())
        return f"MLP activations left alone ({found}): {ACTIVATIONS_LEFT_ALONE}"

    def __str__(self) -> str:
        lines = [f"opir replaced {self.total_replaced} module(s)"]
        if self.rotary:
            hooked = sum(n for n, _ in self.rotary.values())
            lines[0] += f"; RoPE on opir in {hooked} attention module(s)"
        lines += [f"  {c}: {n} -> opir.layers.{w}" for c, (n, w) in self.replaced.items()]
        lines += [
            f"  {c}: {n} -> {w}, {WITHIN_TOLERANCE}" for c, (n, w) in self.activations.items()
        ]
        lines += [f"  {c}: {n} -> {w}" for c, (n, w) in self.rotary.items()]
        lines += [
            f"  {c}: {n} -> q/k norms + RoPE fused: opir.ops.qk_norm_rotary_pos_emb"
            for c, n in self.fused_qk_norm.items()
        ]
        lines += [
            f"  {c}: {n} q/k norms not fused ({why})"
            for c, (n, why) in self.fused_qk_norm_left_alone.items()
        ]
        if self.left_alone or self.rotary_left_alone:
            lines.append("left alone:")
            lines += [f"  {c}: {n} ({why})" for c, (n, why) in self.left_alone.items()]
            rope = self.rotary_left_alone.items()
            lines += [f"  {c}: {n} (rotary: {why})" for c, (n, why) in rope]
        line = self._activations_line()
        if line:
            lines.append(line)
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"opir.integrations.transformers: {self.total_replaced} replaced")
        for column in ("class", "count", "result"):
            table.add_column(column)
        for c, (n, w) in self.replaced.items():
            table.add_row(c, str(n), f"[green]replaced[/green] by opir.layers.{w}")
        for c, (n, w) in self.activations.items():
            table.add_row(c, str(n), f"[green]replaced[/green] by {w}, {WITHIN_TOLERANCE}")
        for c, (n, w) in self.rotary.items():
            table.add_row(c, str(n), f"[green]rotary on[/green] {w}")
        for c, (n, why) in self.left_alone.items():
            table.add_row(c, str(n), f"[yellow]left alone[/yellow]: {why}")
        for c, (n, why) in self.rotary_left_alone.items():
            table.add_row(c, str(n), f"[yellow]rotary left alone[/yellow]: {why}")
        for c, n in self.fused_qk_norm.items():
            table.add_row(c, str(n), "[green]q/k norms + RoPE fused[/green]")
        for c, (n, why) in self.fused_qk_norm_left_alone.items():
            table.add_row(c, str(n), f"[yellow]q/k norms not fused[/yellow]: {why}")
        for c, n in self.activations_left_alone.items():
            table.add_row(c, str(n), f"[yellow]left alone[/yellow]: {ACTIVATIONS_LEFT_ALONE}")
        return table


@dataclass(frozen=True)
class _Spec:
    """What an applied layer computes (plain data: pickles, deep-copies, compares)."""

    kind: str  # the opir layer: "RMSNorm", "GemmaRMSNorm" or "RMSNormGated"
    eps: float | str  # or _FINFO_EPS
    uses_weight: bool
    second: str | None  # the role of forward's second argument: None, "residual", "gate"
    weight_bias: float = 0.0
    group_size: int | None = None
    norm_before_gate: bool = False
    fp32_multiply: bool = False  # the ops' "multiply in fp32, round once"


def _compute(spec: _Spec, weight: torch.Tensor | None, x: torch.Tensor, other) -> Any:
    """The opir ops for ``spec``; functional only: the caller's tensors are never donated."""
    w = weight if spec.uses_weight else None
    eps = torch.finfo(x.dtype).eps if spec.eps == _FINFO_EPS else cast(float, spec.eps)
    once = spec.fp32_multiply
    if spec.kind == "RMSNormGated":
        return rms_norm_gated(x, other, w, eps, spec.group_size, spec.norm_before_gate, once)
    if other is None:
        return rms_norm(x, w, eps, None, spec.weight_bias, once)
    return fused_add_rms_norm(x, other, w, eps, None, spec.weight_bias, once)


def _key(x: torch.Tensor, other: torch.Tensor | None, weight: torch.Tensor | None) -> Key:
    return (
        x.dtype,
        None if other is None else other.dtype,
        None if weight is None else weight.dtype,
        x.dim(),
        x.device.type,
        x.shape[-1] if x.dim() else 0,
        torch.is_autocast_enabled(x.device.type),  # autocast changes the original's ops
    )


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> tuple | None:
    """(x, second) from a call in the original forward's argument names, or None
    for a call form the applied layer does not compute (then the original runs)."""
    if len(args) > len(names) or len(args) + len(kwargs) > len(names):
        return None
    values: list = list(args) + [None] * (len(names) - len(args))
    for name, value in kwargs.items():
        if name not in names or names.index(name) < len(args):
            return None
        values[names.index(name)] = value
    x = values[0]
    other = values[1] if len(values) > 1 else None
    if not isinstance(x, torch.Tensor) or not (other is None or isinstance(other, torch.Tensor)):
        return None
    return x, other


class _Applied:
    """Mixin of the applied layers: the envelope check, the priority scope and the
    original's ``forward`` outside the envelope. Its state is plain data in the
    instance ``__dict__``; the original module is kept there unregistered."""

    opir_priority: dict[str, list[str]] | None
    opir_envelope: dict[Key, bool]
    # of the nn.Module this is mixed into; ``weight`` is Any because the layers type it
    # differently (Parameter | None in RMSNorm, Parameter in RMSNormGated)
    weight: Any
    _parameters: dict[str, nn.Parameter | None]
    _buffers: dict[str, torch.Tensor | None]

    @property
    def opir_original(self) -> nn.Module:
        """The module ``apply`` replaced (sharing this layer's parameters and hooks)."""
        return self.__dict__["_opir_original"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        spec: _Spec = self.__dict__["_opir_spec"]
        bound = _bind(self.__dict__["_opir_names"], args, kwargs)
        if bound is not None:
            x, other = bound
            weight = self.weight if spec.uses_weight else None
            key = _key(x, other, weight)
            ok = self.opir_envelope.get(key)
            if ok is None and not torch.compiler.is_compiling():
                ok = self._opir_verify(key, x.device)
            if ok:
                defer = self.__dict__.get("_opir_defer")  # q/k norm fused into the RoPE call
                if defer is not None and other is None and defer.claim(self, x):
                    return x
                if self.opir_priority is None:
                    return _compute(spec, weight, x, other)
                with opir.priority(self.opir_priority):
                    return _compute(spec, weight, x, other)
        original = self.__dict__["_opir_original"]
        return type(original).forward(original, *args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        """An attribute set after ``apply`` (``norm.variance_epsilon = 1e-5``) reaches the
        original too, and the envelope is emptied: every key is verified again against
        the changed module, so a verdict never outlives the state it was made on."""
        d = self.__dict__
        original = d.get("_opir_original")
        if original is None or name.startswith("_") or name in _LAYER_OWN:
            return super().__setattr__(name, value)
        if isinstance(getattr(type(self), name, None), property):
            setattr(original, name, value)  # e.g. ``eps``: a read-only alias on the layer
        else:
            super().__setattr__(name, value)
            if name not in self._parameters and name not in self._buffers:
                setattr(original, name, value)  # the parameter/buffer dicts are shared
        d["opir_envelope"].clear()

    def _opir_verify(self, key: Key, device: torch.device) -> bool:
        spec: _Spec = self.__dict__["_opir_spec"]
        original = self.__dict__["_opir_original"]
        ok = _probe(_reference(original), spec, key, device) is None
        self.opir_envelope[key] = ok
        return ok


_LAYER_OWN = frozenset({"training", "opir_priority", "opir_envelope"})


class AppliedRMSNorm(_Applied, RMSNorm):
    """``RMSNorm`` in place of a verified module (see the module docstring)."""


class AppliedGemmaRMSNorm(_Applied, GemmaRMSNorm):
    """``GemmaRMSNorm`` in place of a verified module (see the module docstring)."""


class AppliedRMSNormGated(_Applied, RMSNormGated):
    """``RMSNormGated`` in place of a verified module (see the module docstring)."""


_LAYERS = {
    "RMSNorm": AppliedRMSNorm,
    "GemmaRMSNorm": AppliedGemmaRMSNorm,
    "RMSNormGated": AppliedRMSNormGated,
}


def _is_norm_like(module: nn.Module) -> bool:
    cls = type(module)
    hub = getattr(cls, "kernel_layer_name", None)
    if hub in _HUB_NAMES or cls.__name__.endswith(_HUB_NAMES):
        return True
    # Norm-like without the name (e.g. T5LayerNorm): a weight and HF's epsilon name.
    return isinstance(getattr(module, "weight", None), nn.Parameter) and isinstance(
        getattr(module, "variance_epsilon", None), float
    )


def _eps(module: nn.Module) -> float | str | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    if "eps" in vars(module) and module.eps is None and isinstance(module, nn.RMSNorm):
        return _FINFO_EPS  # torch.nn.RMSNorm(eps=None): the machine epsilon of x's dtype
    return None


def _widths(module: nn.Module) -> list[int]:
    """The last-dim sizes probed at apply time (others are verified on first use)."""
    weight = _weight(module)
    if weight is not None:
        return [weight.shape[0]]
    for name in ("normalized_shape", "hidden_size", "dim"):
        value = getattr(module, name, None)
        if isinstance(value, tuple) and len(value) == 1:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return [value]
    return [64]


def _weight(module: nn.Module) -> torch.Tensor | None:
    """The weight Parameter the norm may multiply by (None: a weightless candidate)."""
    return module._parameters.get("weight")


def _call_form(module: nn.Module) -> tuple[tuple[str, ...], str | None] | str:
    """(argument names the applied layer binds, role of the second) or why not."""
    try:
        params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return "forward has no inspectable signature"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        return "forward does not take the input as its first positional argument"
    names: tuple[str, ...] = (params[0].name,)
    second = None
    if len(params) > 1 and params[1].kind in positional and params[1].name == "gate":
        second = "gate"
    elif len(params) > 1 and params[1].kind in positional and "residual" in params[1].name:
        second = "residual"
    if second is not None:
        if params[1].default is not None and params[1].default is not inspect.Parameter.empty:
            # A call without it would not mean "no second input" (the keys probe that).
            return f"forward's {params[1].name} has a default other than None"
        names += (params[1].name,)
    required = [
        p.name
        for p in params[len(names) :]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        return f"forward requires arguments opir does not take: {', '.join(required)}"
    return names, second


def _structure(module: nn.Module) -> str | None:
    """Why ``module``'s state or code path is out of reach of the probe, or None."""
    if "forward" in module.__dict__:
        return "forward is patched on the instance (e.g. an accelerate hook): cannot verify it"
    if any(True for _ in module.children()):
        return "has submodules"
    extra = [n for n, p in module._parameters.items() if n != "weight" and p is not None]
    if extra:
        return f"has parameters beyond weight ({', '.join(extra)})"
    weight = _weight(module)
    if weight is not None:
        if weight.dim() != 1 or not weight.dtype.is_floating_point:
            return f"weight is not a 1-D floating tensor ({weight.dtype}, {list(weight.shape)})"
        if weight.device.type == "meta":
            return "weight is on the meta device: cannot verify"
    if type(module).get_extra_state is not nn.Module.get_extra_state:
        return "has extra state opir's layer would not keep"
    tensors = [
        n for n, v in vars(module).items() if isinstance(v, torch.Tensor) and not n.startswith("_")
    ]
    if tensors:
        return f"holds tensors outside its parameters and buffers ({', '.join(tensors)})"
    if _eps(module) is None:
        return "no float epsilon attribute (variance_epsilon / eps)"
    return None


def _hidden(module: nn.Module) -> int | None:
    weight = _weight(module)
    return None if weight is None else weight.shape[0]


def _candidates(module: nn.Module, second: str | None) -> list[_Spec]:
    eps = _eps(module)
    assert eps is not None
    weight = _weight(module)
    if second == "gate":
        hidden = weight.shape[0] if weight is not None else None
        groups: list[int | None] = []
        group = getattr(module, "group_size", None)
        if isinstance(group, int) and not isinstance(group, bool):
            groups.append(group)
        n_groups = getattr(module, "n_groups", None)
        if isinstance(n_groups, int) and hidden and n_groups > 0 and hidden % n_groups == 0:
            groups.append(hidden // n_groups)
        groups.append(None)
        return [
            _Spec("RMSNormGated", eps, weight is not None, second, 0.0, g, before, once)
            for g in dict.fromkeys(groups)
            for before in (False, True)
            for once in ((False, True) if weight is not None else (False,))
        ]
    if weight is None:
        return [_Spec("RMSNorm", eps, False, second)]
    return [
        _Spec("RMSNorm", eps, True, second),
        _Spec("RMSNorm", eps, True, second, fp32_multiply=True),
        _Spec("GemmaRMSNorm", eps, True, second, weight_bias=1.0),
    ]


def _reference(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with random floating parameters and buffers (a buffer the
    forward reads then changes the output, so a candidate that ignores it fails)."""
    with torch.inference_mode(False), torch.no_grad():
        reference = copy.deepcopy(module)
        gen = torch.Generator().manual_seed(1)
        for tensor in [*reference.parameters(), *reference.buffers()]:
            if tensor.dtype.is_floating_point:
                values = torch.randn(tensor.shape, generator=gen) * 0.5 + 0.25
                tensor.copy_(values.to(tensor.device, tensor.dtype))
    return reference


def _initial_keys(
    w_dtypes: list[torch.dtype | None], second: str | None, device: torch.device, widths: list
) -> list[Key]:
    """Home keys (x in the weight's dtype) first, for each weight dtype in ``w_dtypes``."""
    keys = []
    for w_dtype in w_dtypes:
        base = w_dtype or torch.get_default_dtype()
        for x_dtype in dict.fromkeys((base, torch.float32, torch.bfloat16)):
            others: list = [None]
            if second == "residual":
                others.append(x_dtype)
            elif second == "gate":
                others += list(dict.fromkeys((base, torch.float32, torch.bfloat16)))
            for o_dtype in others:
                keys += [
                    (x_dtype, o_dtype, w_dtype, rank, device.type, width, False)
                    for width in widths
                    for rank in _RANKS
                ]
    return keys


def _describe(key: Key) -> str:
    x_dtype, o_dtype, w_dtype, rank, device, width, _ = key
    text = f"rank-{rank} {str(x_dtype).removeprefix('torch.')} x of width {width}"
    if o_dtype is not None:
        text += f" with a {str(o_dtype).removeprefix('torch.')} second input"
    if w_dtype is not None:
        text += f", {str(w_dtype).removeprefix('torch.')} weight"
    return text + f" on {device}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.device == b.device
            and (torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(p, q) for p, q in zip(a, b, strict=True))
    return False


def _probe(reference: nn.Module, spec: _Spec, key: Key, device: torch.device) -> str | None:
    """None when every case of ``key`` ran on the reference and the candidate and
    matched bit for bit, leaving the inputs as they were; otherwise why not."""
    x_dtype, o_dtype, w_dtype, rank, _, width, autocast = key
    weight = _weight(reference)
    if autocast:
        return f"{_describe(key)}: calls under torch.autocast are not probed"
    if rank not in _RANKS:
        return f"{_describe(key)}: only ranks {_RANKS} are probed"
    if (None if weight is None else weight.dtype) != w_dtype:
        return f"{_describe(key)}: the weight's dtype changed"
    hiddens = [width]
    name = spec.kind + (" (fp32_multiply)" if spec.fp32_multiply else "")
    forward = type(reference).forward
    gen = torch.Generator().manual_seed(2)
    ran = 0
    with torch.inference_mode(False), torch.no_grad(), opir.priority(_NATIVE):
        for hidden in hiddens:
            for lead in _LEADING[rank]:
                shape = (*lead, hidden)
                scale = torch.exp(torch.randn((*lead, 1), generator=gen) * 2)
                x = (torch.randn(shape, generator=gen) * scale).to(device, x_dtype)
                other = None
                if o_dtype is not None:
                    other = torch.randn(shape, generator=gen).to(device, o_dtype)
                args = (x,) if other is None else (x, other)
                saved = [a.clone() for a in args]
                what = f"{_describe(key)} {list(shape)}"
                try:
                    expected = forward(reference, *args)
                except Exception as e:  # any failure means "not verified"
                    return f"its forward raises on {what} ({type(e).__name__})"
                if not all(_same(a, s) for a, s in zip(args, saved, strict=True)):
                    return f"its forward modifies its inputs ({what})"
                want = tuple if spec.second == "residual" and other is not None else torch.Tensor
                if not isinstance(expected, want):
                    return f"its forward returns {type(expected).__name__} on {what}"
                try:
                    got = _compute(spec, weight, x, other)
                except Exception as e:
                    return f"opir's {name} raises on {what} ({type(e).__name__}: {e})"
                if not all(_same(a, s) for a, s in zip(args, saved, strict=True)):
                    return f"opir's {name} modifies its inputs ({what})"
                if not _same(got, expected):
                    return f"numerics differ from opir's {name} on {what}"
                ran += 1
    return None if ran else f"{_describe(key)}: no probe case ran"


@dataclass
class _Verdict:
    spec: _Spec
    names: tuple[str, ...]
    envelope: dict[Key, bool]


def _verdict(module: nn.Module) -> _Verdict | str:
    """The best verified candidate for ``module`` (most envelope keys), or why none."""
    why = _structure(module)
    if why is not None:
        return why
    form = _call_form(module)
    if isinstance(form, str):
        return form
    names, second = form
    weight = _weight(module)
    device = weight.device if weight is not None else torch.device("cpu")
    references = {None if weight is None else weight.dtype: _reference(module)}
    if weight is not None and weight.dtype != torch.bfloat16:
        # What model.to(bfloat16) makes of it: verified now, so the choice between
        # candidates that agree in fp32 (rounding before or after the weight) is informed.
        with torch.inference_mode(False):
            references[torch.bfloat16] = copy.deepcopy(references[weight.dtype]).bfloat16()
    keys = _initial_keys(list(references), second, device, _widths(module))
    home_dtype = None if weight is None else weight.dtype
    best: _Verdict | None = None
    reasons = []
    for spec in _candidates(module, second):
        envelope: dict[Key, bool] = {}
        first_failure = None
        for key in keys:
            home = key[2] == home_dtype and (weight is None or key[0] == home_dtype)
            if not home and not any(envelope.values()):
                break  # no home key verified: this candidate is out
            failure = _probe(references[key[2]], spec, key, device)
            envelope[key] = failure is None
            first_failure = first_failure or failure
        # Replaced only when the calls the model makes -- x in the weight's own dtype --
        # verify at some rank; other keys verified as well widen the envelope.
        if any(envelope.values()) and (
            best is None or sum(envelope.values()) > sum(best.envelope.values())
        ):
            best = _Verdict(spec, names, envelope)
        if first_failure is not None:
            reasons.append(first_failure)
    if best is None:
        return "no opir candidate matched on any probe of x in the weight's dtype: " + "; ".join(
            reasons[:2]
        )
    return best


def _cache_key(module: nn.Module) -> tuple | None:
    """Everything a verdict depends on, or None when that cannot be told (then the
    module is verified on its own)."""
    attrs = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        if not isinstance(value, _PLAIN):
            return None
        attrs.append((name, type(value), value))
    tensors = tuple(
        (kind, name, None if t is None else (t.dtype, tuple(t.shape), t.device))
        for kind, table in (("p", module._parameters), ("b", module._buffers))
        for name, t in table.items()
    )
    return (type(module), tuple(attrs), tensors, tuple(module._non_persistent_buffers_set))


def _make_layer(module: nn.Module, verdict: _Verdict, priority: dict | None) -> nn.Module:
    spec = verdict.spec
    hidden = _hidden(module)
    size = hidden or 1
    eps = 0.0 if spec.eps == _FINFO_EPS else cast(float, spec.eps)
    if spec.kind == "RMSNormGated":
        layer = AppliedRMSNormGated(size, eps, spec.group_size, spec.norm_before_gate)
    else:
        layer = _LAYERS[spec.kind](size, eps)
    # Plain attributes Hugging Face code reads, set in __dict__: None is a value here that
    # the opir layers' own (int, float) attributes never take.
    layer.__dict__["hidden_size"] = hidden  # None for a weightless norm: any width
    if spec.eps == _FINFO_EPS:
        layer.__dict__["variance_epsilon"] = None  # as torch.nn.RMSNorm: finfo(x.dtype).eps
    layer.__dict__.pop("weight", None)
    for name in _SHARED:
        if name in module.__dict__:
            layer.__dict__[name] = module.__dict__[name]
    layer.__dict__.update(
        _opir_original=module,
        _opir_spec=spec,
        _opir_names=verdict.names,
        opir_envelope=dict(verdict.envelope),
        opir_priority=priority,
    )
    layer.train(module.training)
    return layer


# ---------------------------------------------------------------------------------------
# Gated-MLP activations (opt-in: ``apply(model, activations=True)``).
#
# opir's activation ops are correctly rounded (fp64, one rounding to x's dtype); torch's
# F.silu / F.gelu are not (fp32 math, layout-dependent), so no opir activation can be bit
# for bit a model's own. An MLP is therefore verified by the same probing as the norms,
# but held to the op's tolerance (``op.tolerance(dtype)``) on the tensor that enters
# ``down_proj``, and replaced only on request.

_MLP_PROJ = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")
_MLP_ACT = ("act_fn", "activation_fn", "act")
_KINDS = ("silu", "gelu", "gelu_tanh")
# The probe holds the ops' native functions (the contract) to the tolerance, as the norms'
# probe holds theirs to bit-exactness; every provider is held to native by opir's tests.
_MLP_NATIVE = {op: ["native"] for op in ("silu_mul", "gelu_mul", "silu_and_mul", "gelu_and_mul")}
WITHIN_TOLERANCE = "within tolerance (not bit-exact: opir rounds the activation correctly)"
ACTIVATIONS_LEFT_ALONE = (
    "not bit-exact by contract (opir rounds the activation correctly, torch does not); "
    "apply(model, activations=True) replaces them within the op's tolerance"
)


@dataclass(frozen=True)
class _MLPSpec:
    """What an applied MLP computes between its projections (plain data)."""

    kind: str  # "silu", "gelu" (erf) or "gelu_tanh"
    merged: bool  # one ``gate_up_proj`` ([gate | up], as Phi-3) or ``gate_proj`` + ``up_proj``

    @property
    def op(self) -> Any:
        if self.kind == "silu":
            return silu_and_mul if self.merged else silu_mul
        return gelu_and_mul if self.merged else gelu_mul

    @property
    def name(self) -> str:
        text = f"opir.ops.{self.op.name}"
        return text + ('(approximate="tanh")' if self.kind == "gelu_tanh" else "")


def _mlp_activation(spec: _MLPSpec, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The opir op on the module's projections of ``x``: the tensor ``down_proj`` takes."""
    extra = () if spec.kind == "silu" else ("tanh" if spec.kind == "gelu_tanh" else "none",)
    if spec.merged:
        return spec.op(_submodule(module, "gate_up_proj")(x), *extra)
    gate, up = _submodule(module, "gate_proj"), _submodule(module, "up_proj")
    return spec.op(gate(x), up(x), *extra)


def _submodule(module: nn.Module, name: str) -> nn.Module:
    """``module``'s child ``name`` (present: the MLP's structure was checked)."""
    child = module._modules[name]
    assert child is not None, name
    return child


def _mlp_compute(spec: _MLPSpec, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _submodule(module, "down_proj")(_mlp_activation(spec, module, x))


def _is_mlp_like(module: nn.Module) -> bool:
    """``down_proj`` and ``gate_proj`` + ``up_proj`` or a merged ``gate_up_proj``, all
    modules (the probe decides whether it computes ``down(act(gate) * up)``)."""
    children = module._modules
    if not isinstance(children.get("down_proj"), nn.Module):
        return False
    separate = all(isinstance(children.get(n), nn.Module) for n in ("gate_proj", "up_proj"))
    return separate or isinstance(children.get("gate_up_proj"), nn.Module)


def _gate_proj(module: nn.Module) -> nn.Module | None:
    proj = module._modules.get("gate_proj")
    return module._modules.get("gate_up_proj") if proj is None else proj


def _mlp_weight_dtype(module: nn.Module) -> torch.dtype | None:
    weight = getattr(_gate_proj(module), "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else None


def _mlp_key(module: nn.Module, x: torch.Tensor) -> Key:
    return (
        x.dtype,
        _mlp_weight_dtype(module),
        x.dim(),
        x.device.type,
        x.shape[-1] if x.dim() else 0,
        torch.is_autocast_enabled(x.device.type),
    )


def _mlp_structure(module: nn.Module) -> str | None:
    """Why ``module`` is out of reach of the MLP probe, or None."""
    if "forward" in module.__dict__:
        return "forward is patched on the instance (e.g. an accelerate hook): cannot verify it"
    if "gate_up_proj" in module._modules and "gate_proj" in module._modules:
        return "has both gate_up_proj and gate_proj"
    extra = [
        n for n, m in module._modules.items() if m is not None and n not in _MLP_PROJ + _MLP_ACT
    ]
    if extra:
        return f"has submodules beyond a gated MLP's ({', '.join(extra)})"
    own = [n for n, p in module._parameters.items() if p is not None]
    own += [n for n, b in module._buffers.items() if b is not None]
    if own:
        return f"has parameters or buffers of its own ({', '.join(own)})"
    if type(module).get_extra_state is not nn.Module.get_extra_state:
        return "has extra state"
    weight = getattr(module._modules.get("down_proj"), "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        return "down_proj has no floating weight"
    if weight.device.type == "meta":
        return "weight is on the meta device: cannot verify"
    if _mlp_weight_dtype(module) is None:
        return "its gate projection has no weight"
    return None


def _mlp_reference(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy in ``dtype`` without hooks, with random parameters that put the gate's
    values around [-8, 8] (the activation's interesting range) for unit-variance x."""
    with torch.inference_mode(False), torch.no_grad():
        reference = copy.deepcopy(module).to(dtype)
        gen = torch.Generator().manual_seed(1)
        for sub in reference.modules():
            for name in _SHARED:
                if "hooks" in name and name in sub.__dict__:
                    sub.__dict__[name] = type(sub.__dict__[name])()  # the copy runs none
            for pname, p in sub._parameters.items():
                if p is None or not p.dtype.is_floating_point:
                    continue
                values = torch.randn(p.shape, generator=gen)
                if pname == "weight" and p.dim() == 2:
                    values = values * (2.5 / p.shape[1] ** 0.5)
                else:
                    values = values * 0.5
                p.copy_(values.to(p.device, p.dtype))
    return reference


def _close(got: torch.Tensor, want: torch.Tensor, op: Any) -> float | None:
    """The worst error over the op's tolerance (<= 1 passes), or None if not comparable
    (other dtype/shape/device, non-finite values in other places)."""
    if got.dtype != want.dtype or got.shape != want.shape or got.device != want.device:
        return None
    g, w = got.double(), want.double()
    finite = torch.isfinite(w)
    if not torch.equal(finite, torch.isfinite(g)):
        return None
    if not torch.equal(g[~finite], w[~finite]):
        return None
    tol = op.tolerance(want.dtype)
    if not finite.any():
        return 0.0
    ratio = (g - w).abs()[finite] / (tol.atol + tol.rtol * w.abs()[finite])
    return float(ratio.max())


def _mlp_probe(
    reference: nn.Module, spec: _MLPSpec, key: Key, device: torch.device
) -> tuple[str | None, float]:
    """(None, worst error / tolerance) when every case of ``key`` ran on the reference and
    the candidate, called ``down_proj`` once on a tensor within the op's tolerance of the
    original's, returned exactly ``down_proj``'s output and left x as it was; else why not."""
    x_dtype, w_dtype, rank, _, width, autocast = key
    what_key = f"rank-{rank} {str(x_dtype).removeprefix('torch.')} x of width {width}"
    if autocast:
        return f"{what_key}: calls under torch.autocast are not probed", 0.0
    if rank not in _RANKS:
        return f"{what_key}: only ranks {_RANKS} are probed", 0.0
    if _mlp_weight_dtype(reference) != w_dtype:
        return f"{what_key}: the weights' dtype changed", 0.0
    down = _submodule(reference, "down_proj")
    seen: list = []
    handles = [
        down.register_forward_pre_hook(lambda m, args: seen.append(("in", args))),
        down.register_forward_hook(lambda m, args, out: seen.append(("out", out))),
    ]
    gen = torch.Generator().manual_seed(2)
    worst = 0.0
    ran = 0
    try:
        with torch.inference_mode(False), torch.no_grad(), opir.priority(_MLP_NATIVE):
            for lead in _LEADING[rank]:
                shape = (*lead, width)
                scale = torch.exp(torch.randn((*lead, 1), generator=gen) * 0.5)
                x = (torch.randn(shape, generator=gen) * scale).to(device, x_dtype)
                saved = x.clone()
                what = f"{what_key} {list(shape)}"
                seen.clear()
                try:
                    expected = type(reference).forward(reference, x)
                except Exception as e:  # any failure means "not verified"
                    return f"its forward raises on {what} ({type(e).__name__})", 0.0
                calls = list(seen)
                if not _same(x, saved):
                    return f"its forward modifies its input ({what})", 0.0
                if [c[0] for c in calls] != ["in", "out"] or len(calls[0][1]) != 1:
                    return f"its forward does not call down_proj once on one tensor ({what})", 0.0
                if not (isinstance(expected, torch.Tensor) and _same(expected, calls[1][1])):
                    return f"its forward does not return down_proj's output ({what})", 0.0
                try:
                    got = _mlp_activation(spec, reference, x)
                except Exception as e:
                    return f"{spec.name} raises on {what} ({type(e).__name__}: {e})", 0.0
                if not _same(x, saved):
                    return f"{spec.name} modifies its input ({what})", 0.0
                h = calls[0][1][0]
                error = _close(got, h, spec.op) if isinstance(h, torch.Tensor) else None
                if error is None or error > 1:
                    return f"numerics differ from {spec.name} beyond its tolerance on {what}", 0.0
                worst = max(worst, error)
                ran += 1
    finally:
        for handle in handles:
            handle.remove()
    return (None, worst) if ran else (f"{what_key}: no probe case ran", 0.0)


@dataclass
class _MLPVerdict:
    spec: _MLPSpec
    names: tuple[str, ...]
    envelope: dict[Key, bool]
    worst: float = 0.0


def _mlp_call_form(module: nn.Module) -> tuple[str, ...] | str:
    form = _call_form(module)
    if isinstance(form, str):
        return form
    return form[0][:1]  # one input: a second argument (if any) is never bound


def _mlp_verdict(module: nn.Module) -> _MLPVerdict | str:
    """The verified candidate for a gated MLP (most keys, then least error), or why none."""
    why = _mlp_structure(module)
    if why is not None:
        return why
    names = _mlp_call_form(module)
    if isinstance(names, str):
        return names
    home = _mlp_weight_dtype(module)
    if home is None:
        return "its gate projection has no weight tensor"
    device = cast(torch.Tensor, _submodule(module, "down_proj").weight).device
    with torch.inference_mode(False):
        # fp32 tells GELU erf from tanh (bf16's tolerance may not); bf16 is what
        # model.to(bfloat16) makes of an fp32 model.
        dtypes = list(dict.fromkeys((home, torch.float32, torch.bfloat16)))
        references = {d: _mlp_reference(module, d) for d in dtypes}
    proj = _gate_proj(module)
    assert proj is not None  # _mlp_structure checked it
    width = getattr(proj, "in_features", None) or cast(torch.Tensor, proj.weight).shape[-1]
    merged = "gate_up_proj" in module._modules
    best: _MLPVerdict | None = None
    reasons = []
    for kind in _KINDS:
        spec = _MLPSpec(kind, merged)
        envelope: dict[Key, bool] = {}
        worst, first_failure = 0.0, None
        for dtype in dtypes:
            for rank in _RANKS:
                key = (dtype, dtype, rank, device.type, width, False)
                if dtype != home and not any(envelope.values()):
                    break
                failure, error = _mlp_probe(references[dtype], spec, key, device)
                envelope[key] = failure is None
                worst = max(worst, error)
                first_failure = first_failure or failure
        if any(envelope.values()) and (
            best is None
            or (sum(envelope.values()), -worst) > (sum(best.envelope.values()), -best.worst)
        ):
            best = _MLPVerdict(spec, names, envelope, worst)
        if first_failure is not None:
            reasons.append(first_failure)
    if best is None:
        return "no opir activation matched within tolerance: " + "; ".join(reasons[:2])
    return best


class AppliedGatedMLP(nn.Module):
    """A gated MLP whose ``act(gate) * up`` is an opir op (``silu_mul``, ``gelu_mul``,
    ``silu_and_mul``, ``gelu_and_mul``), in place of a module verified within the op's
    tolerance. It shares the original's submodules (the same Linear objects), parameter,
    buffer and hook dictionaries; outside its envelope the original's forward runs."""

    opir_priority: dict[str, list[str]] | None
    opir_envelope: dict[Key, bool]

    @property
    def opir_original(self) -> nn.Module:
        return self.__dict__["_opir_original"]

    @property
    def opir_op(self) -> str:
        """The opir op this layer computes, e.g. ``opir.ops.silu_mul``."""
        return self.__dict__["_opir_spec"].name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        spec: _MLPSpec = self.__dict__["_opir_spec"]
        bound = _bind(self.__dict__["_opir_names"], args, kwargs)
        if bound is not None:
            x = bound[0]
            key = _mlp_key(self, x)
            ok = self.opir_envelope.get(key)
            if ok is None and not torch.compiler.is_compiling():
                ok = self._opir_verify(key, x.device)
            if ok:
                if self.opir_priority is None:
                    return _mlp_compute(spec, self, x)
                with opir.priority(self.opir_priority):
                    return _mlp_compute(spec, self, x)
        original = self.__dict__["_opir_original"]
        return type(original).forward(original, *args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        """Attributes and submodules set after ``apply`` (``mlp.act_fn = ...``) reach the
        original too, and empty the envelope: every key is verified again."""
        d = self.__dict__
        original = d.get("_opir_original")
        if original is None or name.startswith("_") or name in _LAYER_OWN:
            return super().__setattr__(name, value)
        super().__setattr__(name, value)
        if name not in self._parameters and name not in self._buffers and name not in self._modules:
            setattr(original, name, value)  # those three dicts are shared
        d["opir_envelope"].clear()

    def _opir_verify(self, key: Key, device: torch.device) -> bool:
        spec: _MLPSpec = self.__dict__["_opir_spec"]
        reference = _mlp_reference(self.__dict__["_opir_original"], key[1] or key[0])
        ok = _mlp_probe(reference, spec, key, device)[0] is None
        self.opir_envelope[key] = ok
        return ok


def _make_mlp_layer(module: nn.Module, verdict: _MLPVerdict, priority: dict | None):
    layer = AppliedGatedMLP()
    for name, value in vars(module).items():
        if not name.startswith("_") and name != "training":
            layer.__dict__[name] = value  # config, hidden_size...: the same objects
    for name in ("_modules", *_SHARED):
        if name in module.__dict__:
            layer.__dict__[name] = module.__dict__[name]
    layer.__dict__.update(
        _opir_original=module,
        _opir_spec=verdict.spec,
        _opir_names=verdict.names,
        opir_envelope=dict(verdict.envelope),
        opir_priority=priority,
    )
    layer.training = module.training
    return layer


def _mlp_cache_key(module: nn.Module) -> tuple:
    """What an MLP verdict depends on: plain attributes by value, others by identity
    (one ``config`` object is shared by a model's layers), per submodule too."""

    def attrs(m: nn.Module) -> tuple:
        return tuple(
            (n, type(v), v if isinstance(v, _PLAIN) else id(v))
            for n, v in sorted(vars(m).items())
            if not n.startswith("_") and n != "training"
        )

    def params(m: nn.Module) -> list:
        return list(m.named_parameters()) + list(m.named_buffers())

    subs = tuple(
        (
            name,
            type(m),
            attrs(m),
            *((n, t.dtype, tuple(t.shape), t.device) for n, t in m.named_parameters()),
        )
        for name, m in module._modules.items()
        if m is not None
    )
    return (type(module), attrs(module), subs)


def _plain_priority(priority: Any) -> dict[str, list[str]]:
    """``priority`` validated now (a typo fails here, not at every later forward) and
    copied into plain data."""
    resolved = resolve_config(priority, "opir.integrations.transformers.apply(priority=...)")
    return {op.name: list(providers) for op, providers in resolved.items()}


def apply(
    model: nn.Module,
    *,
    priority: dict[str, list[str]] | None = None,
    activations: bool = False,
    rotary: bool = True,
    fuse_qk_norm: bool = True,
) -> ApplyReport:
    """Replace ``model``'s RMSNorm-family modules by verified opir layers in place.

    ``priority`` (op name -> providers, as for ``opir.priority``) is validated now,
    stored as plain data on each replaced layer (``layer.opir_priority``) and scoped
    around its opir call. Layers ``apply`` already placed are left as they are.
    Call ``revert(model)`` to put the original modules back.

    Gated-MLP activations (``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, or a merged
    ``gate_up_proj`` chunked into ``[gate | up]`` as Phi-3) cannot be bit-exact: opir's
    ``silu_mul`` / ``gelu_mul`` / ``silu_and_mul`` / ``gelu_and_mul`` round the activation
    correctly (fp64, one rounding), torch's ``F.silu`` / ``F.gelu`` do not (and differ
    between layouts). So by default they are left alone (the report says why). With
    ``activations=True`` each MLP is verified by the same probing, but held to the op's
    tolerance (``op.tolerance(dtype)``) on the tensor entering ``down_proj`` instead of bit
    for bit, and replaced by an ``AppliedGatedMLP`` that shares its submodules; the report
    lists it under ``activations``, "within tolerance (not bit-exact: ...)".

    Rotary embeddings (``rotary=True``, the default): every attention module whose
    class ``forward`` calls its modeling module's ``apply_rotary_pos_emb`` gets it
    computed by ``opir.ops.rotary_pos_emb`` where that function is verified bit for bit
    (per envelope key, as the norms); the function is put in the modeling module's
    global (an ``AppliedRotary`` that runs opir only inside the applied model's attention
    calls, with its priority) and restored by ``revert`` once no applied attention module
    of that family is left. ``report.rotary`` / ``report.rotary_left_alone`` list the
    attention classes. ``rotary=False`` leaves RoPE alone.

    ``fuse_qk_norm=True`` (the default, with ``rotary``): an attention module whose
    per-head ``q_norm`` / ``k_norm`` are applied opir norms (Qwen3, Gemma 3...) runs them
    and RoPE as one ``opir.ops.qk_norm_rotary_pos_emb`` in eager calls, when a probe of
    its forward on a random-weight copy is bit-identical fused and unfused
    (``report.fused_qk_norm``); under ``torch.compile`` the separate ops run.
    """
    plain = None if priority is None else _plain_priority(priority)
    if model.training and any(p.requires_grad for p in model.parameters()):
        warnings.warn(
            "opir.integrations.transformers.apply: the model is in training mode with "
            "parameters that require grad; opir ops are inference-only, so backward() "
            "through a replaced norm raises. Call model.eval() (and requires_grad_(False)) "
            "for inference, or do not apply opir to a model you train.",
            stacklevel=2,
        )
    report = ApplyReport()
    verdicts: dict[tuple, Any] = {}
    layers: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for child_name, module in list(parent._modules.items()):
            if module is None or isinstance(module, _APPLIED):
                continue
            norm = _is_norm_like(module)
            if not norm and not _is_mlp_like(module):
                continue
            layer = layers.get(id(module))
            if layer is None:
                cls = type(module).__name__
                if not norm and not activations:
                    report.activations_left_alone[cls] = (
                        report.activations_left_alone.get(cls, 0) + 1
                    )
                    layers[id(module)] = module
                    continue
                cache = _cache_key(module) if norm else _mlp_cache_key(module)
                verdict = verdicts.get(cache) if cache is not None else None
                if verdict is None:
                    verdict = _verdict(module) if norm else _mlp_verdict(module)
                    if cache is not None:
                        verdicts[cache] = verdict
                if isinstance(verdict, str):
                    report._add(report.left_alone, cls, verdict)
                    layers[id(module)] = module
                    continue
                if isinstance(verdict, _MLPVerdict):
                    layer = _make_mlp_layer(module, verdict, plain)
                    report._add(report.activations, cls, verdict.spec.name)
                else:
                    layer = _make_layer(module, verdict, plain)
                    report._add(report.replaced, cls, verdict.spec.kind)
                layers[id(module)] = layer
            if layer is not module:
                parent._modules[child_name] = layer
    if rotary:
        _apply_rotary(model, plain, report, fuse_qk_norm)
    return report


def _apply_rotary(
    model: nn.Module, priority: dict | None, report: ApplyReport, fuse_qk_norm: bool
) -> None:
    """Hook every attention module that calls its modeling module's
    ``apply_rotary_pos_emb`` to the verified ``AppliedRotary`` (see ``_rotary``)."""
    verdicts: dict[str, Any] = {}
    fused: dict[type, str] = {}
    for module in {id(m): m for m in model.modules()}.values():
        site = _rotary.rotary_site(module)
        if site is None or _rotary.is_hooked(module):
            continue
        home, module_name = site
        cls = type(module).__name__
        if "forward" in module.__dict__:
            why = "forward is patched on the instance (e.g. an accelerate hook)"
            report._add(report.rotary_left_alone, cls, why)
            continue
        found = verdicts.get(module_name)
        if found is None:
            found = _rotary.verdict(getattr(home, _rotary.NAME), module)
            verdicts[module_name] = found
        if isinstance(found, str):
            report._add(report.rotary_left_alone, cls, found)
            continue
        function = _rotary.install(home, module_name, found)
        _rotary.hook(module, function, priority)
        where = f"{module_name.rsplit('.', 1)[-1]}.{_rotary.NAME}"
        report._add(report.rotary, cls, f"{function.opir_spec.name} in place of {where}")
        if fuse_qk_norm and "q_norm" in module._modules and "k_norm" in module._modules:
            not_fused = fused.get(type(module))  # a class that failed is not probed again
            if not_fused is None:
                not_fused = _rotary.fuse(module)  # probes and wires this instance
                if not_fused is not None:
                    fused[type(module)] = not_fused
            if not_fused is None:
                report.fused_qk_norm[cls] = report.fused_qk_norm.get(cls, 0) + 1
            else:
                report._add(report.fused_qk_norm_left_alone, cls, not_fused)


def revert(model: nn.Module) -> int:
    """Put back, under every parent, the modules ``apply`` replaced (norms and gated
    MLPs) and remove the rotary hooks of its attention modules (the modeling module's
    ``apply_rotary_pos_emb`` is restored when no hooked attention module is left);
    returns how many modules.

    The originals share the applied layers' parameter, buffer and hook dictionaries (an
    MLP also its submodules), so whatever was loaded or assigned meanwhile
    (``load_state_dict(assign=True)``) stays.
    """
    reverted: set[int] = set()
    for module in list(model.modules()):
        if _rotary.unhook(module):
            reverted.add(id(module))
    for parent in list(model.modules()):
        for child_name, layer in list(parent._modules.items()):
            if isinstance(layer, _APPLIED):
                original = layer.opir_original
                original.train(layer.training)
                parent._modules[child_name] = original
                reverted.add(id(layer))
    return len(reverted)


_APPLIED = (_Applied, AppliedGatedMLP)

__all__ = [
    "AppliedGatedMLP",
    "AppliedGemmaRMSNorm",
    "AppliedRMSNorm",
    "AppliedRMSNormGated",
    "AppliedRotary",
    "ApplyReport",
    "apply",
    "revert",
]
