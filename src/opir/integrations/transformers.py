"""Put a Hugging Face ``transformers`` model's RMSNorm family on opir, in place.

``apply(model)`` finds every norm-like module (class name ending in ``RMSNorm`` or
``RMSNormGated``, a class ``transformers``/``kernels`` marks with the hub layer
name ``RMSNorm``/``RMSNormGated``, or any module with a ``weight`` Parameter and a
float ``variance_epsilon``), and replaces it with an opir layer that shares
the *same* ``Parameter`` object, so weights loaded later (``load_state_dict``,
``param.data.copy_``) reach the opir layer.

Nothing is replaced on trust: for each (class, weight dtype) the candidate opir
layer is checked against the module's own ``forward`` on random inputs (random
weight, ``x`` in the weight's dtype and in fp32, gate in both) with priority
``native``; only a bit-identical candidate is used. A class no candidate matches
is left alone and the report says why. ``transformers`` itself is not imported.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import opir
from opir.layers import GemmaRMSNorm, RMSNorm, RMSNormGated

_ORIGINALS = "_opir_originals"
_HUB_NAMES = ("RMSNorm", "RMSNormGated")
_OPS = ("rms_norm", "fused_add_rms_norm", "rms_norm_gated")


@dataclass
class ApplyReport:
    """What ``apply`` did: per original class, the count replaced and by which opir
    layer; per class left alone, the count and the reason."""

    replaced: dict[str, tuple[int, str]] = field(default_factory=dict)
    left_alone: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def total_replaced(self) -> int:
        return sum(n for n, _ in self.replaced.values())

    def _add(self, table: dict, cls: str, what: str) -> None:
        count = table.get(cls, (0, what))[0]
        table[cls] = (count + 1, what)

    def __str__(self) -> str:
        lines = [f"opir replaced {self.total_replaced} module(s)"]
        lines += [f"  {c}: {n} -> opir.layers.{w}" for c, (n, w) in self.replaced.items()]
        if self.left_alone:
            lines.append("left alone:")
            lines += [f"  {c}: {n} ({why})" for c, (n, why) in self.left_alone.items()]
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"opir.integrations.transformers: {self.total_replaced} replaced")
        for column in ("class", "count", "result"):
            table.add_column(column)
        for c, (n, w) in self.replaced.items():
            table.add_row(c, str(n), f"[green]replaced[/green] by opir.layers.{w}")
        for c, (n, why) in self.left_alone.items():
            table.add_row(c, str(n), f"[yellow]left alone[/yellow]: {why}")
        return table


def _is_norm_like(module: nn.Module) -> bool:
    cls = type(module)
    hub = getattr(cls, "kernel_layer_name", None)
    if hub in _HUB_NAMES or cls.__name__.endswith(_HUB_NAMES):
        return True
    # Norm-like without the name (e.g. T5LayerNorm): a weight and HF's epsilon name.
    return isinstance(getattr(module, "weight", None), nn.Parameter) and isinstance(
        getattr(module, "variance_epsilon", None), float
    )


def _eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _candidates(module: nn.Module, eps: float) -> list[tuple[str, nn.Module]]:
    """opir layers that may compute what ``module`` computes (verified afterwards)."""
    weight = module.weight
    hidden = weight.shape[0]
    params = inspect.signature(module.forward).parameters
    if "gate" in params:
        group = getattr(module, "group_size", None)
        group = group if isinstance(group, int) else None
        return [
            ("RMSNormGated", RMSNormGated(hidden, eps, group, before, dtype=weight.dtype))
            for before in (False, True)
        ]
    return [("RMSNorm", RMSNorm(hidden, eps)), ("GemmaRMSNorm", GemmaRMSNorm(hidden, eps))]


def _probe_inputs(module: nn.Module, dtype: torch.dtype, gated: bool) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    hidden = module.weight.shape[0]
    device = module.weight.device
    dtypes = list(dict.fromkeys((dtype, torch.float32)))
    cases = []
    for x_dtype in dtypes:
        x = (3 * torch.randn(3, hidden, generator=gen)).to(device, x_dtype)
        if not gated:
            cases.append((x,))
            continue
        for g_dtype in dtypes:
            cases.append((x, torch.randn(3, hidden, generator=gen).to(device, g_dtype)))
        cases.append((x, None))
    return cases


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _match(module: nn.Module) -> tuple[str, type, dict] | str:
    """The matching (layer name, layer class, kwargs) for ``module``, or why none."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return "no 1-D weight Parameter (e.g. a weightless or layer-norm variant)"
    if not weight.dtype.is_floating_point or weight.device.type == "meta":
        return f"weight is {weight.dtype} on {weight.device}: cannot verify"
    eps = _eps(module)
    if eps is None:
        return "no float epsilon attribute (variance_epsilon / eps)"
    if any(True for _ in module.children()) or len(list(module.parameters())) != 1:
        return "has submodules or extra parameters beyond weight"
    gated = "gate" in inspect.signature(module.forward).parameters
    reference = copy.deepcopy(module)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        reference.weight.copy_(torch.randn(weight.shape, generator=gen) * 0.5 + 0.25)
    cases = _probe_inputs(reference, weight.dtype, gated)
    tried = []
    for name, layer in _candidates(reference, eps):
        layer.weight = reference.weight
        ok = True
        with torch.no_grad(), opir.priority({op: ["native"] for op in _OPS}):
            for args in cases:
                try:
                    expected = reference(*args)
                except Exception:  # the module itself rejects this input (e.g. gate=None)
                    continue
                if not _same(layer(*args), expected):
                    ok = False
                    break
        if ok:
            kwargs = {"eps": eps}
            if isinstance(layer, RMSNormGated):
                kwargs.update(group_size=layer.group_size, norm_before_gate=layer.norm_before_gate)
            return name, type(layer), kwargs
        tried.append(name)
    return (
        f"numerics differ from every candidate ({', '.join(tried)}) for a {weight.dtype} "
        "weight: no opir contract computes this class's forward bit-exactly"
    )


def _with_priority(layer: nn.Module, priority: dict[str, list[str]]) -> None:
    forward = layer.forward

    def prioritised(*args, **kwargs):
        with opir.priority(priority):
            return forward(*args, **kwargs)

    layer.forward = prioritised


def apply(model: nn.Module, *, priority: dict[str, list[str]] | None = None) -> ApplyReport:
    """Replace ``model``'s RMSNorm-family modules by opir layers in place.

    ``priority`` (op name -> providers, as for ``opir.priority``) is scoped around
    every replaced layer's call (a context manager per call: use it for testing
    or pinning; leave it None for the process-wide priority, the fast path).
    Call ``revert(model)`` to put the original modules back.
    """
    report = ApplyReport()
    originals: dict[str, nn.Module] = model.__dict__.setdefault(_ORIGINALS, {})
    verdicts: dict[tuple, tuple[str, type, dict] | str] = {}
    for qualified, module in list(model.named_modules()):
        if not qualified or not _is_norm_like(module) or qualified in originals:
            continue
        cls = type(module).__name__
        weight = getattr(module, "weight", None)
        key = (type(module), getattr(weight, "dtype", None), _eps(module))
        if key not in verdicts:
            verdicts[key] = _match(module)
        verdict = verdicts[key]
        if isinstance(verdict, str):
            report._add(report.left_alone, cls, verdict)
            continue
        name, layer_cls, kwargs = verdict
        layer = layer_cls(module.weight.shape[0], **kwargs)
        layer.weight = module.weight  # the same Parameter object: later loads reach it
        layer.train(module.training)
        if priority is not None:
            _with_priority(layer, priority)
        parent_name, _, child = qualified.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        originals[qualified] = module
        report._add(report.replaced, cls, name)
    return report


def revert(model: nn.Module) -> int:
    """Put back the modules ``apply`` replaced; returns how many."""
    originals: dict[str, nn.Module] = model.__dict__.pop(_ORIGINALS, {})
    for qualified, module in originals.items():
        parent_name, _, child = qualified.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)
    return len(originals)


__all__ = ["ApplyReport", "apply", "revert"]
