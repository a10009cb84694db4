"""The eager fast path, generated per op from its signature.

A generic ``__call__(self, *args, **kwargs)`` pays for packing, for filling
defaults and for looping over argument positions on every call. Instead each
op gets a ``__call__`` with the op's own parameters (as ``dataclasses`` does
for ``__init__``): Python binds positional, keyword and default arguments
natively, wrong arity fails with Python's own message naming the op, and the
plain-tensor / autograd checks are unrolled for exactly the op's tensor
parameters. The generated body, for ``rms_norm(x, weight, epsilon, variance_size=None)``::

    if _dynamo_compiling():                  # Dynamo folds this to True
        return self.torch_op(x, weight, epsilon, variance_size)
    if (_scope_get() is None and not _dispatch_mode_depth()
            and not _functorch_active()
            and type(x) in _PLAIN and type(weight) in _PLAIN_OR_NONE
            and not (_grad_enabled() and (x.requires_grad or ...))):
        for pred, fn in self._entries:       # the filtered priority chain
            if pred is None or pred(x, weight, epsilon, variance_size):
                return fn(x, weight, epsilon, variance_size)
    return self._call_slow((x, weight, epsilon, variance_size))

Parameter names come from ``inspect.signature`` (valid identifiers) and
defaults are attached as ``__defaults__``, never written into the source.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from opir.core import scope as _scope

_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
_NAMESPACE: dict[str, Any] = {
    "_dynamo_compiling": torch.compiler.is_dynamo_compiling,
    "_dispatch_mode_depth": torch._C._len_torch_dispatch_stack,
    "_functorch_active": torch._C._are_functorch_transforms_active,
    "_grad_enabled": torch.is_grad_enabled,
    "_scope_get": _scope.current.get,
    "_PLAIN": _PLAIN,
    "_PLAIN_OR_NONE": _PLAIN | {type(None)},
}


def make_call(
    name: str,
    signature: inspect.Signature,
    tensor_params: Sequence[str],
    optional_tensor_params: Sequence[str],
) -> Callable[..., Any]:
    """Build ``__call__(self, <op params>)`` for one op overload."""
    params = list(signature.parameters)
    args = ", ".join(params)
    type_checks = [
        f"type({p}) in {'_PLAIN_OR_NONE' if p in optional_tensor_params else '_PLAIN'}"
        for p in tensor_params
    ]
    grad_checks = [
        f"({p} is not None and {p}.requires_grad)"
        if p in optional_tensor_params
        else f"{p}.requires_grad"
        for p in tensor_params
    ]
    eager_ok = " and ".join(
        [
            "_scope_get() is None",
            "not _dispatch_mode_depth()",
            "not _functorch_active()",
            *type_checks,
            f"not (_grad_enabled() and ({' or '.join(grad_checks) or 'False'}))",
        ]
    )
    source = (
        f"def {name}(self, {args}):\n"
        f"    if _dynamo_compiling():\n"
        f"        return self.torch_op({args})\n"
        f"    if {eager_ok}:\n"
        f"        for pred, fn in self._entries:\n"
        f"            if pred is None or pred({args}):\n"
        f"                return fn({args})\n"
        f"    return self._call_slow(({args},))\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<opir hot path of {name}>", "exec"), dict(_NAMESPACE), namespace)
    fn = namespace[name]
    defaults = tuple(
        p.default for p in signature.parameters.values() if p.default is not inspect.Parameter.empty
    )
    fn.__defaults__ = defaults or None
    fn.__qualname__ = name
    fn.__opir_source__ = source
    return fn


def specialize(cls: type, name: str, call: Callable[..., Any]) -> type:
    """A subclass of ``cls`` whose ``__call__`` is the generated fast path."""
    return type(f"{cls.__name__}[{name}]", (cls,), {"__call__": call, "__slots__": ()})
