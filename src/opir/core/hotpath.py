"""The eager fast path, generated per op from its signature.

A generic ``__call__(self, *args, **kwargs)`` pays for packing, for filling
defaults and for looping over argument positions on every call. Instead each
op gets a ``__call__`` with the op's own parameters (as ``dataclasses`` does
for ``__init__``): Python binds positional, keyword and default arguments
natively, wrong arity fails with Python's own message naming the op, and the
plain-tensor / autograd checks are unrolled for exactly the op's tensor
parameters. The generated body, for ``rms_norm(x, weight, epsilon, ...)``::

    if _dynamo_compiling():                  # Dynamo folds this to True
        return self.torch_op(x, weight, epsilon, ...)
    if (not _dispatch_mode_depth() and not _functorch_active()
            and _fwad._current_level < 0     # no forward-mode AD level open
            and type(x) in _PLAIN and type(weight) in _PLAIN_OR_NONE):
        scope = _scope_get()
        if scope is None:                    # no `with` block: the process default
            entries = self._entries
        elif scope.plain:                    # scoped priorities only: one dict lookup
            entries = scope.hot_entries.get(self, self._entries)
        else:                                # tracing or strict: full selection
            return self._call_selecting((x, weight, epsilon, ...))
        if _grad_enabled() and (x.requires_grad or ...):
            return self._call_refusing_backward(entries, (x, weight, epsilon, ...))
        for pred, fn in entries:             # the filtered priority
            if pred is None or pred(x, weight, epsilon, ...):
                return fn(x, weight, epsilon, ...)
    return self.torch_op(x, weight, epsilon, ...)

The op's parameters may have any name that is a valid identifier: every name
the template itself needs (``self``, ``scope``, ``pred``, ``type``, ...) is
renamed until it collides with none of them. Defaults are attached as
``__defaults__``, never written into the source.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as _fwad

from opir.core import scope as _scope
from opir.core.errors import RegistrationError

_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
_PLAIN_OR_NONE = _PLAIN | {type(None)}
_GLOBALS: dict[str, Any] = {
    "_dynamo_compiling": torch.compiler.is_dynamo_compiling,
    "_dispatch_mode_depth": torch._C._len_torch_dispatch_stack,
    "_functorch_active": torch._C._are_functorch_transforms_active,
    "_fwad": _fwad,
    "_grad_enabled": torch.is_grad_enabled,
    "_scope_get": _scope.current.get,
    "_PLAIN": _PLAIN,
    "_PLAIN_OR_NONE": _PLAIN_OR_NONE,
    "_plain_list": lambda seq: seq is None or all(type(t) in _PLAIN_OR_NONE for t in seq),
    "_list_requires_grad": lambda seq: (
        seq is not None and any(t is not None and t.requires_grad for t in seq)
    ),
    "type": type,
}
_LOCALS = ("self", "scope", "entries", "pred", "fn")


def check_parameter_names(op_name: str, names: Sequence[str]) -> None:
    """Every parameter must be a plain identifier (not a keyword, not dunder-private)."""
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if bad:
        raise RegistrationError(
            f"op '{op_name}': parameter name(s) {bad} are not valid Python identifiers or are "
            "keywords; rename them (e.g. 'lambda_' instead of 'lambda')"
        )


def _fresh_names(params: Sequence[str]) -> dict[str, str]:
    """A name for each template identifier that no parameter shadows."""
    taken = set(params)
    chosen: dict[str, str] = {}
    for name in (*_GLOBALS, *_LOCALS):
        fresh = name
        while fresh in taken:
            fresh += "_"
        taken.add(fresh)
        chosen[name] = fresh
    return chosen


def make_call(
    name: str,
    signature: inspect.Signature,
    tensor_params: Sequence[str],
    optional_tensor_params: Sequence[str],
    tensor_list_params: Sequence[str] = (),
    *,
    donating: bool = False,
) -> Callable[..., Any]:
    """Build ``__call__(self, <op params>)`` for one op overload.

    ``tensor_list_params`` (``list[Tensor]`` parameters) get their elements
    checked (plain tensors, requires_grad). ``donating`` (``maybe_inplace``):
    under a functorch transform the call is served by the functional op,
    which transforms support (donation only permits writing, never requires it).
    """
    params = list(signature.parameters)
    n = _fresh_names(params)
    args = ", ".join(params)
    packed = f"({args},)" if params else "()"
    plain, plain_or_none = n["_PLAIN"], n["_PLAIN_OR_NONE"]
    type_checks = [
        f"{n['type']}({p}) in {plain_or_none if p in optional_tensor_params else plain}"
        for p in tensor_params
    ]
    grad_checks = [
        f"({p} is not None and {p}.requires_grad)"
        if p in optional_tensor_params
        else f"{p}.requires_grad"
        for p in tensor_params
    ]
    type_checks += [f"{n['_plain_list']}({p})" for p in tensor_list_params]
    grad_checks += [f"{n['_list_requires_grad']}({p})" for p in tensor_list_params]
    eager_ok = " and ".join(
        [
            f"not {n['_dispatch_mode_depth']}()",
            f"not {n['_functorch_active']}()",
            f"{n['_fwad']}._current_level < 0",
            *type_checks,
        ]
    )
    self_, scope, entries, pred, fn = (n[k] for k in _LOCALS)
    source = (
        f"def __opir_call({', '.join([self_, *params])}):\n"
        f"    if {n['_dynamo_compiling']}():\n"
        f"        return {self_}.torch_op({args})\n"
        f"    if {eager_ok}:\n"
        f"        {scope} = {n['_scope_get']}()\n"
        f"        if {scope} is None:\n"
        f"            {entries} = {self_}._entries\n"
        f"        elif {scope}.plain:\n"
        f"            {entries} = {scope}.hot_entries.get({self_}, {self_}._entries)\n"
        f"        else:\n"
        f"            return {self_}._call_selecting({packed})\n"
        f"        if {n['_grad_enabled']}() and ({' or '.join(grad_checks) or 'False'}):\n"
        f"            return {self_}._call_refusing_backward({entries}, {packed})\n"
        f"        for {pred}, {fn} in {entries}:\n"
        f"            if {pred} is None or {pred}({args}):\n"
        f"                return {fn}({args})\n"
        + (
            f"    if {n['_functorch_active']}():\n        return {self_}.op.torch_op({args})\n"
            if donating
            else ""
        )
        + f"    return {self_}.torch_op({args})\n"
    )
    namespace: dict[str, Any] = {}
    globals_ = {n[k]: v for k, v in _GLOBALS.items()}
    try:
        exec(compile(source, f"<opir hot path of {name}>", "exec"), globals_, namespace)
    except SyntaxError as e:  # defensive: names were validated before we got here
        raise RegistrationError(f"op '{name}': cannot generate its call path: {e}") from None
    call = namespace["__opir_call"]
    # Name the code after the op: Python's arity errors then read "rms_norm() missing ...".
    call.__code__ = call.__code__.replace(co_name=name, co_qualname=name)
    defaults = tuple(
        p.default for p in signature.parameters.values() if p.default is not inspect.Parameter.empty
    )
    call.__defaults__ = defaults or None
    call.__qualname__ = name
    call.__opir_source__ = source
    return call


def specialize(cls: type, name: str, call: Callable[..., Any]) -> type:
    """A subclass of ``cls`` whose ``__call__`` is the generated fast path."""
    return type(f"{cls.__name__}[{name}]", (cls,), {"__call__": call, "__slots__": ()})
