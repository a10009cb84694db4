"""Rotary position embedding of Hugging Face attention modules on opir (used by
``opir.integrations.transformers.apply``; see docs/transformers.md).

``transformers`` calls RoPE as a module-level function, ``apply_rotary_pos_emb(q, k,
cos, sin, unsqueeze_dim=1)``, looked up in the modeling module's globals by every
attention ``forward``. Its hub-kernel mark (``use_kernel_forward_from_hub(
"rotary_pos_emb")``, formerly ``use_kernel_func_from_hub``) is an identity decorator
unless the ``kernels`` package is installed, and even then the attention code calls the
module global, so there is no registry opir could register with. opir therefore puts an
``AppliedRotary`` in that global: a callable holding the original, which runs opir's
``rotary_pos_emb`` **only inside the forward of an attention module of an applied
model** (a pre-hook pushes the model's priority on the function's scope stack, an
``always_call`` forward hook pops it) and only on a verified envelope key; everywhere
else -- a stock model of the same family in the same process, an unseen key under
``torch.compile``, a call form never probed -- the original function runs.

Verification is the norms' scheme: the candidate (opir's op, possibly with a cast back
to q's dtype or a half-width cos/sin duplicated) is compared bit for bit, with priority
``native``, against the original function on random inputs per envelope key (dtypes of
q, k, cos, sin; ranks; ``unsqueeze_dim``; head and rotary widths; device; autocast).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import opir
from opir.ops import qk_norm_rotary_pos_emb, rotary_pos_emb

NAME = "apply_rotary_pos_emb"
NATIVE_OPS = ("rotary_pos_emb", "qk_norm_rotary_pos_emb", "rms_norm")
_NATIVE = {op: ["native"] for op in NATIVE_OPS}
_ARGS = ("q", "k", "cos", "sin", "unsqueeze_dim")

RopeKey = tuple  # (q, k, cos, sin dtypes, q/k/cos ranks, unsqueeze_dim, widths, device, autocast)


@dataclass(frozen=True)
class RopeSpec:
    """How the original is computed with opir's ``rotary_pos_emb`` (plain data)."""

    cast_back: bool = False  # outputs cast to q's / k's dtype (OLMo-2: fp32 cos, bf16 q)
    half_cos: bool = False  # cos/sin hold rotary_dim / 2 columns (GPT-OSS): duplicated
    neg_sin: bool = False  # rotate_half with the other sign (NanoChat): sin negated (exact)

    @property
    def name(self) -> str:
        text = "opir.ops.rotary_pos_emb"
        flags = (
            ("cast back", self.cast_back),
            ("half cos/sin", self.half_cos),
            ("sin negated", self.neg_sin),
        )
        extras = [w for w, on in flags if on]
        return text + (f" ({', '.join(extras)})" if extras else "")


_CANDIDATES = (
    RopeSpec(),
    RopeSpec(cast_back=True),
    RopeSpec(half_cos=True),
    # x*cos + (-rotate_half(x))*sin == x*cos + rotate_half(x)*(-sin) bit for bit: negation
    # is exact and commutes with the rounded product
    RopeSpec(neg_sin=True),
)


def compute(spec: RopeSpec, q, k, cos, sin, unsqueeze_dim: int) -> tuple:
    if spec.half_cos:
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((sin, sin), dim=-1)
    if spec.neg_sin:
        sin = -sin
    q_out, k_out = rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)
    if spec.cast_back:
        q_out, k_out = q_out.to(q.dtype), k_out.to(k.dtype)
    return q_out, k_out


def _key(q, k, cos, sin, unsqueeze_dim) -> RopeKey:
    return (
        q.dtype,
        k.dtype,
        cos.dtype,
        sin.dtype,
        q.dim(),
        k.dim(),
        cos.dim(),
        unsqueeze_dim,
        q.shape[-1],
        k.shape[-1],
        cos.shape[-1],
        sin.shape[-1],
        q.device.type,
        torch.is_autocast_enabled(q.device.type),
    )


def _bind(args: tuple, kwargs: dict) -> tuple | None:
    """(q, k, cos, sin, unsqueeze_dim) from a call, or None for another call form."""
    if not kwargs and len(args) == 4:  # the models' call: no list, no loop
        q, k, cos, sin = args
        if (
            isinstance(q, torch.Tensor)
            and isinstance(k, torch.Tensor)
            and isinstance(cos, torch.Tensor)
            and isinstance(sin, torch.Tensor)
        ):
            return q, k, cos, sin, 1
        return None
    if len(args) > 5 or len(args) + len(kwargs) > 5:
        return None
    values: list = [*args, *([None] * (5 - len(args)))]
    for name, value in kwargs.items():
        if name not in _ARGS or _ARGS.index(name) < len(args):
            return None
        values[_ARGS.index(name)] = value
    if values[4] is None:
        values[4] = 1
    if not all(isinstance(v, torch.Tensor) for v in values[:4]):
        return None
    if type(values[4]) is not int:
        return None
    return tuple(values)


class AppliedRotary:
    """Stands in a modeling module's ``apply_rotary_pos_emb`` (see the module docstring).

    ``opir_original`` is the function it replaced, ``opir_spec`` how opir computes it,
    ``opir_envelope`` the verified keys (True: opir runs). Deep copies are the object
    itself (a copied model shares its family's function); pickling refers to the
    modeling module's global by name."""

    def __init__(self, module_name: str, original: Any, spec: RopeSpec) -> None:
        self.module_name = module_name
        self.opir_original = original
        self.opir_spec = spec
        self.opir_envelope: dict[RopeKey, bool] = {}
        # The applied attention calls in progress, innermost last: one stack per thread
        # in eager (two threads may run models of one family at once), and ``traced``
        # while dynamo traces (it runs the hooks and this function in one thread).
        self._local = threading.local()
        self.traced: list[_Enter] = []
        self.holders: weakref.WeakSet = weakref.WeakSet()  # attention modules hooked
        self.__wrapped__ = original  # inspect.signature / unwrap see the original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scopes = self.stack()
        if scopes:
            top = scopes[-1]
            if top.pending_q is not None or top.pending_k is not None:
                return self._fused(top, args, kwargs)
            bound = _bind(args, kwargs)
            if bound is not None:
                key = _key(*bound)
                ok = self.opir_envelope.get(key)
                if ok is None and not torch.compiler.is_compiling():
                    ok = self.verify(key, bound[0].device)
                if ok:
                    priority = top.priority
                    if priority is None:
                        return compute(self.opir_spec, *bound)
                    with opir.priority(priority):
                        return compute(self.opir_spec, *bound)
        return self.opir_original(*args, **kwargs)

    def stack(self) -> list[_Enter]:
        """This thread's stack of applied attention calls (see ``__init__``)."""
        if torch.compiler.is_compiling():
            return self.traced
        local = self._local
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        return stack

    def _fused(self, top: _Enter, args: tuple, kwargs: dict) -> Any:
        """The rotary call of an attention whose q/k norms were deferred to it: one
        ``qk_norm_rotary_pos_emb`` when both were and every key is verified, else the
        norms (the layers' verified computation) then the usual path."""
        xq, xk = top.pending_q, top.pending_k
        top.pending_q = top.pending_k = None
        fused = top.fused
        assert fused is not None
        bound = _bind(args, kwargs)
        q_how = k_how = None
        if bound is not None:
            q, k, cos, sin, u = bound
            q_how = _relation(q, xq, u) if xq is not None else "none"
            k_how = _relation(k, xk, u) if xk is not None else "none"
        if bound is None or q_how is None or k_how is None:
            # never silently wrong: the norms were skipped for a call the probe never saw
            raise RuntimeError(
                f"opir: the q/k norms of {fused.attention_class} were deferred to the rotary "
                "call, which got other tensors; call opir.integrations.transformers.revert "
                "and apply(model, fuse_qk_norm=False), and report this"
            )
        if q_how == k_how != "none":
            key = _key(q, k, cos, sin, u)
            ok = self.opir_envelope.get(key)
            if ok is None and not torch.compiler.is_compiling():
                ok = self.verify(key, q.device)
            if ok and self.opir_spec == RopeSpec():
                unsqueeze = 2 if q_how == "transposed" else u
                if top.priority is None:
                    qo, ko = fused.compute(xq, xk, cos, sin, unsqueeze)
                else:
                    with opir.priority(top.priority):
                        qo, ko = fused.compute(xq, xk, cos, sin, unsqueeze)
                if q_how == "transposed":
                    return qo.transpose(1, 2), ko.transpose(1, 2)
                return qo, ko
        top.deferring = False  # the layers now compute (not defer) their norm
        try:
            if xq is not None:
                q = _view_as(fused.q_norm(xq), q_how)
            if xk is not None:
                k = _view_as(fused.k_norm(xk), k_how)
        finally:
            top.deferring = True
        return self(q, k, cos, sin, unsqueeze_dim=u)

    def verify(self, key: RopeKey, device: torch.device) -> bool:
        ok = probe(self.opir_original, self.opir_spec, key, device) is None
        self.opir_envelope[key] = ok
        return ok

    def __deepcopy__(self, memo: dict) -> AppliedRotary:
        return self

    def __reduce__(self) -> tuple:
        return (_installed, (self.module_name, self.opir_spec))

    def __repr__(self) -> str:
        return f"<opir AppliedRotary {self.module_name}.{NAME}: {self.opir_spec.name}>"


def _installed(module_name: str, spec: RopeSpec) -> AppliedRotary:
    """The function installed in ``module_name`` (unpickling), or an inert stand-in
    that is never called (its hooks then push and pop on nothing that runs)."""
    current = getattr(importlib.import_module(module_name), NAME, None)
    if isinstance(current, AppliedRotary):
        return current
    return AppliedRotary(module_name, current, spec)


def _relation(t: torch.Tensor, x: torch.Tensor, unsqueeze_dim: int) -> str | None:
    """How the rotary's ``t`` derives from the deferred norm's input ``x``: "same"
    (Gemma 3 norms after the transpose), "transposed" (``x.transpose(1, 2)``: Qwen3
    norms [b, s, h, d] before it; then the fused op takes ``x`` with unsqueeze_dim=2),
    or None (anything else: the deferral is refused)."""
    if t is x:
        return "same"
    if (
        unsqueeze_dim == 1
        and x.dim() == 4
        and t.dim() == 4
        and t.data_ptr() == x.data_ptr()
        and t.shape == (x.shape[0], x.shape[2], x.shape[1], x.shape[3])
        and t.stride() == (x.stride(0), x.stride(2), x.stride(1), x.stride(3))
    ):
        return "transposed"
    return None


def _view_as(y: torch.Tensor, how: str) -> torch.Tensor:
    return y.transpose(1, 2) if how == "transposed" else y


@dataclass
class FusedQK:
    """The q/k norms of one attention module, fused into its rotary call."""

    attention_class: str
    q_layer: Any  # the applied norm layers (``weight``: their shared Parameter)
    k_layer: Any
    epsilon: float
    weight_bias: float

    def compute(self, xq, xk, cos, sin, unsqueeze_dim: int) -> tuple:
        return qk_norm_rotary_pos_emb(
            xq,
            xk,
            self.q_layer.weight,
            self.k_layer.weight,
            self.epsilon,
            cos,
            sin,
            unsqueeze_dim,
            self.weight_bias,
        )

    def q_norm(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.q_layer).forward(self.q_layer, x)

    def k_norm(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.k_layer).forward(self.k_layer, x)


class _Enter:
    """Forward pre-hook of an applied attention module: the call goes on the function's
    stack (with the model's priority and, when fused, the deferred q/k norm inputs)."""

    def __init__(self, function: AppliedRotary, priority: dict | None) -> None:
        self.function = function
        self.priority = priority
        self.fused: FusedQK | None = None
        self.deferring = True
        self.pending_q: torch.Tensor | None = None
        self.pending_k: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.pending_q = self.pending_k = None
        self.function.stack().append(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "pending_q": None, "pending_k": None}


class _Exit:
    """Forward hook (``always_call``): pops what ``_Enter`` pushed, also on an exception;
    a deferred q/k norm that no rotary call consumed is an error, never a silent skip."""

    def __init__(self, enter: _Enter) -> None:
        self.enter = enter

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        scopes = self.enter.function.stack()
        if not scopes or scopes[-1] is not self.enter:
            return  # its pre-hook did not run (hooks registered while the forward ran)
        top = scopes.pop()
        if top.pending_q is not None or top.pending_k is not None:
            top.pending_q = top.pending_k = None
            if sys.exc_info()[0] is None:
                raise RuntimeError(
                    f"opir: {type(module).__name__} deferred its q/k norm to a rotary call "
                    "that never came; call opir.integrations.transformers.revert and "
                    "apply(model, fuse_qk_norm=False), and report this"
                )


class Defer:
    """Set on an applied q_norm / k_norm layer (``layer._opir_defer``): inside its
    attention's eager call the layer returns its input and the rotary call normalises."""

    def __init__(self, enter: _Enter, role: str) -> None:
        self.enter = enter
        self.role = role

    def claim(self, layer: nn.Module, x: torch.Tensor) -> bool:
        enter = self.enter
        scopes = enter.function.stack()
        if (
            not scopes
            or scopes[-1] is not enter
            or not enter.deferring
            or x.dim() != 4
            or layer._forward_hooks  # a hook would see the unnormalised output
            or torch.compiler.is_compiling()
        ):
            return False
        if self.role == "q" and enter.pending_q is None:
            enter.pending_q = x
            return True
        if self.role == "k" and enter.pending_k is None:
            enter.pending_k = x
            return True
        return False


# ---------------------------------------------------------------------------------------
# Verification


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same_kind = a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
        return same_kind and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(p, q) for p, q in zip(a, b, strict=True))
    return False


def _describe(key: RopeKey) -> str:
    qd, _, cd, _, qr, _, _, u, qw, _, cw, _, dev, _ = key
    name = str(qd).removeprefix("torch.")
    cname = str(cd).removeprefix("torch.")
    text = f"rank-{qr} {name} q of width {qw}, {cname} cos of width {cw}"
    return text + f", unsqueeze_dim={u} on {dev}"


def probe(original: Any, spec: RopeSpec, key: RopeKey, device: torch.device) -> str | None:
    """None when every case of ``key`` ran on the original and on opir and matched bit
    for bit (tuple of two tensors, same dtypes/shapes/values, inputs unmodified)."""
    qd, kd, cd, sd, qr, kr, cr, u, qw, kw, cw, sw, _, autocast = key
    what_key = _describe(key)
    if autocast:
        return f"{what_key}: calls under torch.autocast are not probed"
    if (qr, kr, cr) != (4, 4, 3) or u not in (1, 2) or cw != sw:
        return f"{what_key}: only 4-D q/k with 3-D cos/sin and unsqueeze_dim 1 or 2 are probed"
    gen = torch.Generator().manual_seed(3)
    ran = 0
    with torch.inference_mode(False), torch.no_grad(), opir.priority(_NATIVE):
        for batch, seq, heads, kv_heads in ((2, 5, 3, 1), (1, 1, 2, 2)):
            # q/k as the models make them: a transposed view of [batch, seq, heads, width]
            q, k = (
                (torch.randn(batch, seq, h, w, generator=gen) * 3).to(device, d)
                for h, w, d in ((heads, qw, qd), (kv_heads, kw, kd))
            )
            if u == 1:
                q, k = q.transpose(1, 2), k.transpose(1, 2)
            angles = torch.rand(batch, seq, cw, generator=gen) * 40 - 20
            cos, sin = angles.cos().to(device, cd), angles.sin().to(device, sd)
            args = (q, k, cos, sin)
            saved = [a.clone() for a in args]
            what = f"{what_key} (batch {batch}, seq {seq})"
            try:
                expected = original(*args, unsqueeze_dim=u)
            except Exception as e:  # any failure means "not verified"
                return f"the original raises on {what} ({type(e).__name__})"
            if not all(_same(a, s) for a, s in zip(args, saved, strict=True)):
                return f"the original modifies its inputs ({what})"
            if not (isinstance(expected, tuple) and len(expected) == 2):
                return f"the original does not return (q, k) on {what}"
            try:
                got = compute(spec, q, k, cos, sin, u)
            except Exception as e:
                return f"{spec.name} raises on {what} ({type(e).__name__}: {e})"
            if not all(_same(a, s) for a, s in zip(args, saved, strict=True)):
                return f"{spec.name} modifies its inputs ({what})"
            if not _same(tuple(got), expected):
                return f"numerics differ from {spec.name} on {what}"
            ran += 1
    return None if ran else f"{what_key}: no probe case ran"


# ---------------------------------------------------------------------------------------
# Discovery and verdicts


def rotary_site(module: nn.Module) -> tuple[Any, str] | None:
    """(modeling module, its function) when ``module``'s class forward calls the global
    ``apply_rotary_pos_emb`` of the module it is defined in, else None."""
    cls = type(module)
    forward = cls.__dict__.get("forward")
    if forward is None:
        return None
    try:
        func = inspect.unwrap(forward)
    except ValueError:
        return None
    code = getattr(func, "__code__", None)
    if code is None or NAME not in code.co_names:
        return None
    home = sys.modules.get(cls.__module__)
    if home is None or getattr(func, "__globals__", None) is not home.__dict__:
        return None
    if not callable(getattr(home, NAME, None)):
        return None
    return home, cls.__module__


def signature_ok(function: Any) -> str | None:
    """Why ``function`` does not take ``(q, k, cos, sin, unsqueeze_dim=1)``, or None."""
    target = function.opir_original if isinstance(function, AppliedRotary) else function
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return "its apply_rotary_pos_emb has no inspectable signature"
    names = tuple(p.name for p in params[:5])
    if names != _ARGS or params[4].default != 1:
        shown = ", ".join(p.name for p in params)
        return f"its apply_rotary_pos_emb takes ({shown}), not (q, k, cos, sin, unsqueeze_dim=1)"
    rest = [p.name for p in params[5:] if p.default is inspect.Parameter.empty]
    if rest:
        return f"its apply_rotary_pos_emb requires {', '.join(rest)}"
    return None


@dataclass
class RopeVerdict:
    spec: RopeSpec
    envelope: dict[RopeKey, bool]


def initial_keys(attention: nn.Module, device: torch.device) -> list[RopeKey]:
    """Keys probed at apply time: the model's dtype (home) first, then fp32 and bf16;
    cos/sin in q's dtype; rotary width = head_dim and, with a partial rotary factor,
    its share (half of it for a half-width cos)."""
    head_dim = getattr(attention, "head_dim", None)
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        return []
    widths = [head_dim]
    config = getattr(attention, "config", None)
    params = getattr(config, "rope_parameters", None)
    factor = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    factor = factor or getattr(config, "partial_rotary_factor", None)
    if isinstance(factor, float) and 0 < factor < 1:
        widths.append(int(head_dim * factor))
    widths += [w // 2 for w in list(widths)]
    dtypes = list(dict.fromkeys((home_dtype(attention), torch.float32, torch.bfloat16)))
    pairs = [(d, d) for d in dtypes]
    # a 16-bit q with an fp32 cos (a rotary module that does not cast, e.g. OLMo-2's):
    # tells "torch's promotion" from "cast back to q's dtype"
    pairs += [(d, torch.float32) for d in dtypes if d != torch.float32]
    return [
        (d, d, c, c, 4, 4, 3, 1, head_dim, head_dim, w, w, device.type, False)
        for d, c in pairs
        for w in dict.fromkeys(widths)
    ]


def home_dtype(attention: nn.Module) -> torch.dtype:
    for p in attention.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.get_default_dtype()


def device_of(attention: nn.Module) -> torch.device:
    for p in attention.parameters():
        return p.device
    return torch.device("cpu")


def verdict(function: Any, attention: nn.Module) -> RopeVerdict | str:
    """The candidate with the most verified keys (a home-dtype key among them), or why none."""
    why = signature_ok(function)
    if why is not None:
        return why
    original = function.opir_original if isinstance(function, AppliedRotary) else function
    device = device_of(attention)
    if device.type == "meta":
        return "the attention's weights are on the meta device: cannot verify"
    keys = initial_keys(attention, device)
    if not keys:
        return "the attention module has no integer head_dim to probe with"
    home = home_dtype(attention)
    best: RopeVerdict | None = None
    reasons: list[str] = []
    for spec in _CANDIDATES:
        envelope: dict[RopeKey, bool] = {}
        first_failure = None
        for key in keys:
            failure = probe(original, spec, key, device)
            envelope[key] = failure is None
            first_failure = first_failure or failure
        if any(v for k, v in envelope.items() if k[0] == home) and (
            best is None or sum(envelope.values()) > sum(best.envelope.values())
        ):
            best = RopeVerdict(spec, envelope)
        if first_failure is not None:
            reasons.append(first_failure)
    if best is None:
        why = "no opir rotary candidate matched on q in the model's dtype: "
        return why + "; ".join(reasons[:2])
    return best


def install(home: Any, module_name: str, found: RopeVerdict) -> AppliedRotary:
    """The ``AppliedRotary`` in ``home``'s global (put there now if it is not yet)."""
    current = getattr(home, NAME)
    if isinstance(current, AppliedRotary):
        for key, ok in found.envelope.items():
            current.opir_envelope.setdefault(key, ok)
        return current
    function = AppliedRotary(module_name, current, found.spec)
    function.opir_envelope.update(found.envelope)
    setattr(home, NAME, function)
    return function


def hook(attention: nn.Module, function: AppliedRotary, priority: dict | None) -> _Enter:
    enter = _Enter(function, priority)
    attention.register_forward_pre_hook(enter)
    attention.register_forward_hook(_Exit(enter), always_call=True)
    function.holders.add(attention)
    return enter


def _enter_of(attention: nn.Module) -> _Enter | None:
    for h in attention._forward_pre_hooks.values():
        if isinstance(h, _Enter):
            return h
    return None


def _fusable_norm(layer: Any, head_dim: int) -> str | None:
    """Why an applied norm layer cannot be folded into qk_norm_rotary_pos_emb, or None."""
    spec = getattr(layer, "__dict__", {}).get("_opir_spec")
    if spec is None:
        return "its q/k norms are not on opir"
    if spec.kind not in ("RMSNorm", "GemmaRMSNorm") or spec.second is not None:
        return f"its q/k norms are {spec.kind} with a second input"
    if not spec.uses_weight or spec.fp32_multiply or not isinstance(spec.eps, float):
        return "its q/k norms are weightless, multiply in fp32 or take eps from the dtype"
    weight = layer.weight
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (head_dim,):
        return "its q/k norms are not per head (weight width != head_dim)"
    return None


def fuse(attention: nn.Module) -> str | None:
    """Fold ``attention``'s applied q/k norms into its rotary call
    (``qk_norm_rotary_pos_emb``) when a probe on a random-weight copy of the attention
    gives the same output bit for bit with and without the fusion; else why not."""
    head_dim = getattr(attention, "head_dim", None)
    if not isinstance(head_dim, int):
        return "no integer head_dim"
    q_layer, k_layer = (attention._modules.get(n) for n in ("q_norm", "k_norm"))
    for layer in (q_layer, k_layer):
        why = _fusable_norm(layer, head_dim)
        if why is not None:
            return why
    assert q_layer is not None and k_layer is not None  # _fusable_norm checked them
    enter = _enter_of(attention)
    if enter is None or enter.function.opir_spec != RopeSpec():
        return "its RoPE is not plain opir.ops.rotary_pos_emb"
    q_spec, k_spec = q_layer.__dict__["_opir_spec"], k_layer.__dict__["_opir_spec"]
    if (q_spec.eps, q_spec.weight_bias) != (k_spec.eps, k_spec.weight_bias):
        return "its q and k norms differ in epsilon or weight offset"
    try:
        names = inspect.signature(type(attention).forward).parameters
    except (TypeError, ValueError):
        return "its forward has no inspectable signature"
    if not {"hidden_states", "position_embeddings", "attention_mask"} <= set(names):
        return "its forward does not take (hidden_states, position_embeddings, attention_mask)"
    why = _probe_fused(attention, head_dim, q_spec.eps, q_spec.weight_bias)
    if why is not None:
        return why
    enter.fused = FusedQK(
        type(attention).__name__, q_layer, k_layer, q_spec.eps, q_spec.weight_bias
    )
    q_layer.__dict__["_opir_defer"] = Defer(enter, "q")
    k_layer.__dict__["_opir_defer"] = Defer(enter, "k")
    return None


def _probe_fused(attention: nn.Module, head_dim: int, eps: float, bias: float) -> str | None:
    """None when the attention's forward on a random-weight copy gives the same output
    with the q/k norms fused into the rotary call (one qk_norm_rotary_pos_emb, no
    rms_norm) as with the separate ops, everything at priority native."""
    dtype, device = home_dtype(attention), device_of(attention)
    with torch.inference_mode(False), torch.no_grad():
        ref = copy.deepcopy(attention)
        gen = torch.Generator().manual_seed(4)
        for name, p in ref.named_parameters():
            if not p.dtype.is_floating_point:
                continue
            values = torch.randn(p.shape, generator=gen)
            if p.dim() == 2:
                values = values / p.shape[1] ** 0.5
            elif "norm" in name:
                values = values * 0.3 + 0.5
            p.copy_(values.to(p.device, p.dtype))
        enter = _enter_of(ref)
        assert enter is not None
        enter.priority = _NATIVE
        q_layer, k_layer = ref._modules["q_norm"], ref._modules["k_norm"]
        for layer in (q_layer, k_layer):
            assert layer is not None
            layer.__dict__["opir_priority"] = _NATIVE
        width = getattr(getattr(ref, "q_proj", None), "in_features", None)
        if not isinstance(width, int):
            return "no q_proj.in_features to probe with"
        hidden = torch.randn(2, 5, width, generator=gen).to(device, dtype)
        angles = torch.rand(2, 5, head_dim, generator=gen) * 40 - 20
        cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
        args = dict(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None)
        try:
            with opir.priority(_NATIVE):
                separate = ref(**args)
                enter.fused = FusedQK("probe", q_layer, k_layer, eps, bias)
                q_layer.__dict__["_opir_defer"] = Defer(enter, "q")
                k_layer.__dict__["_opir_defer"] = Defer(enter, "k")
                with opir.trace() as trace:
                    fused = ref(**args)
        except Exception as e:
            return f"the fused probe raises ({type(e).__name__}: {e})"[:300]
    ops = [r.op for r in trace.records]
    if ops.count("qk_norm_rotary_pos_emb") != 1 or "rms_norm" in ops:
        return "the fused probe did not run one qk_norm_rotary_pos_emb in place of the norms"
    if not _same_output(separate, fused):
        return "its output differs with the q/k norms fused into the rotary call"
    return None


def _same_output(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same_output(p, q) for p, q in zip(a, b, strict=True))
    return _same(a, b)


def is_hooked(attention: nn.Module) -> bool:
    return any(isinstance(h, _Enter) for h in attention._forward_pre_hooks.values())


def unhook(attention: nn.Module) -> bool:
    """Remove opir's hooks from ``attention``; restore the modeling module's function
    when no hooked attention module is left. True when there were hooks."""
    found = False
    for hid, h in list(attention._forward_pre_hooks.items()):
        if isinstance(h, _Enter):
            del attention._forward_pre_hooks[hid]
            attention._forward_pre_hooks_with_kwargs.pop(hid, None)
            function = h.function
            function.holders.discard(attention)
            found = True
            home = sys.modules.get(function.module_name)
            if not function.holders and home is not None and getattr(home, NAME) is function:
                setattr(home, NAME, function.opir_original)
    for name in ("q_norm", "k_norm"):
        layer = attention._modules.get(name)
        if layer is not None:
            layer.__dict__.pop("_opir_defer", None)
    for hid, h in list(attention._forward_hooks.items()):
        if isinstance(h, _Exit):
            del attention._forward_hooks[hid]
            attention._forward_hooks_with_kwargs.pop(hid, None)
            attention._forward_hooks_always_called.pop(hid, None)
    return found


__all__ = ["AppliedRotary"]
