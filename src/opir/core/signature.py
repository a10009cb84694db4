"""What an op's native function declares: names, schema, tensor parameters.

Everything here only inspects and validates; nothing is registered. An op's
whole signature is analysed (and any problem raised) before the first
registration step touches torch, so a rejected op leaves no trace behind.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import keyword
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.library import infer_schema as _torch_infer_schema

from opir.core.errors import RegistrationError
from opir.core.hotpath import check_parameter_names

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid op or provider name, else RegistrationError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistrationError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and '_', "
            "not starting with a digit (regex ^[a-z_][a-z0-9_]*$)"
        )
    if keyword.iskeyword(name):  # torch.fx and compiled code name values after the op
        raise RegistrationError(
            f"invalid {kind} name {name!r}: it is a Python keyword, which torch.fx and "
            f"opir.compile cannot use as a name in generated code; choose another name "
            f"(e.g. {name + '_'!r})"
        )
    return name


def infer_schema(fn: Callable, what: str, mutates: Sequence[str] = ()) -> str:
    """torch's schema string for ``fn`` (RegistrationError with the fix if impossible)."""
    try:
        return _torch_infer_schema(fn, mutates_args=tuple(mutates))
    except Exception as e:  # torch raises ValueError/TypeError/RuntimeError here
        raise RegistrationError(
            f"cannot infer a torch schema for {what}: {e}. Annotate every parameter and "
            "the return type with torch types (Tensor, Tensor | None, float, int, ...)."
        ) from e


@dataclasses.dataclass(frozen=True)
class OpSignature:
    """The validated facts about an op's native function."""

    signature: inspect.Signature
    names: tuple[str, ...]
    schema: str
    inplace_schema: str | None  # the maybe_inplace overload's, for allow_inplace ops
    tensor_positions: tuple[int, ...]
    optional_tensor_names: tuple[str, ...]  # tensor parameters that may be None
    tensor_list_names: tuple[str, ...]  # list[Tensor] parameters (checked element by element)
    float_positions: tuple[int, ...]  # float parameters (the torch op turns an int into a float)
    activations: tuple[str, ...]
    activation_positions: tuple[int, ...]
    returns_list: bool = False  # the result is list[Tensor] (schema ``Tensor[]``), not a tuple

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.tensor_positions)

    def param_list(self) -> str:
        """``(x, weight, epsilon, variance_size=None)``: for error messages."""
        return fmt_params([(p.name, p.default) for p in self.signature.parameters.values()])


def analyze(
    fn: Callable, name: str, activations: Sequence[str] | None, allow_inplace: bool
) -> OpSignature:
    """Validate ``fn`` as the native function of op ``name``; raise before registering."""
    if not callable(fn):
        raise RegistrationError(f"register_op needs a function, got {fn!r}")
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    bad = [p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if bad:
        raise RegistrationError(
            f"op '{name}': parameters {bad} are keyword-only or variadic; opir ops take "
            "plain positional-or-keyword parameters so every impl can be called "
            "positionally (move them before any '*' and drop *args/**kwargs)"
        )
    names = tuple(p.name for p in params)
    check_parameter_names(name, names)
    schema = infer_schema(fn, f"op '{name}'")
    kinds = [_param_kind(p.annotation, fn) for p in params]
    tensor_positions = tuple(i for i, k in enumerate(kinds) if k in ("tensor", "optional"))
    if activations is None:
        activations = [n for n in names if n.startswith("x")]
    unknown = [a for a in activations if a not in names]
    if unknown:
        raise RegistrationError(
            f"op '{name}': activations {unknown} are not parameters; parameters are {list(names)}"
        )
    activation_positions = tuple(names.index(a) for a in activations)
    not_tensor = [names[i] for i in activation_positions if i not in tensor_positions]
    if not_tensor:
        raise RegistrationError(f"op '{name}': activations {not_tensor} must be Tensors")
    inplace_schema = None
    if allow_inplace:
        if not activation_positions:
            raise RegistrationError(
                f"op '{name}': allow_inplace=True needs at least one activation to donate "
                "(name it x... or pass activations=[...])"
            )
        inplace_schema = infer_schema(fn, f"op '{name}'", mutates=activations)
    return OpSignature(
        signature=signature,
        names=names,
        schema=schema,
        inplace_schema=inplace_schema,
        tensor_positions=tensor_positions,
        optional_tensor_names=tuple(names[i] for i in tensor_positions if kinds[i] == "optional"),
        tensor_list_names=tuple(n for n, k in zip(names, kinds, strict=True) if k == "list"),
        float_positions=tuple(i for i, k in enumerate(kinds) if k == "float"),
        activations=tuple(activations),
        activation_positions=activation_positions,
        returns_list=schema.endswith("-> Tensor[]"),
    )


def check_same_schema(fn: Callable, schema: str, what: str) -> None:
    """An impl or fake must have exactly the op's schema."""
    got = infer_schema(fn, what)
    if got != schema:
        raise RegistrationError(
            f"{what} has schema {got} but the op's is {schema}; "
            "parameter names, types, defaults and return type must match exactly"
        )


def check_same_parameters(what: str, sig: OpSignature, fn: Callable) -> None:
    """A predicate or eager function must take the op's parameters, same names and defaults."""
    if not callable(fn):
        raise RegistrationError(f"{what} must be callable")
    want = [(p.name, p.default) for p in sig.signature.parameters.values()]
    got_params = list(inspect.signature(fn).parameters.values())
    got = [(p.name, p.default) for p in got_params]
    kinds_ok = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in got_params)
    if got != want or not kinds_ok:
        raise RegistrationError(
            f"{what} must take the op's parameters with the same names and "
            f"defaults {sig.param_list()}, got {fmt_params(got)}"
        )


def fmt_params(params: list[tuple[str, Any]]) -> str:
    empty = inspect.Parameter.empty
    return "(" + ", ".join(n if d is empty else f"{n}={d!r}" for n, d in params) + ")"


def _param_kind(annotation: Any, fn: Callable) -> str | None:
    """The kind of one parameter, from its annotation: 'tensor', 'optional'
    (Tensor | None), 'list' (a list of tensors), 'float' (float or float | None)
    or None (anything else)."""
    if isinstance(annotation, str):  # postponed annotations: resolve like torch does
        annotation = eval(annotation, fn.__globals__)
    if annotation is torch.Tensor:
        return "tensor"
    if annotation is float:
        return "float"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if torch.Tensor in args:
            return "optional" if type(None) in args else "tensor"
        if float in args:
            return "float"
        if type(None) in args and len(args) == 2:  # list[Tensor] | None
            inner = next(a for a in args if a is not type(None))
            return "list" if _param_kind(inner, fn) == "list" else None
    if origin in (list, collections.abc.Sequence) and args:
        return "list" if _param_kind(args[0], fn) in ("tensor", "optional") else None
    return None
