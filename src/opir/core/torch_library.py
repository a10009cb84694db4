"""Defining an op as ``torch.ops.opir.<name>``: one step of registration.

The op gets its own ``torch.library.Library`` fragment, so a failure part way
through is rolled back completely (the name stays free to register again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.library import Library

from opir.core.errors import RegistrationError
from opir.core.registry import NAMESPACE


@dataclasses.dataclass(frozen=True)
class TorchHooks:
    """The Python callbacks torch calls for an op's overloads."""

    kernel: Callable[..., Any]  # CompositeExplicitAutograd kernel of the default overload
    fake: Callable[..., Any]
    autograd_kernel: Callable[..., Any]  # Autograd key of the default overload: refuses backward
    inplace_kernel: Callable[..., Any] | None = None
    refuse_grad_donation: Callable[..., Any] | None = None  # Autograd key of maybe_inplace


@dataclasses.dataclass(frozen=True)
class TorchOp:
    library: Library
    default: torch._ops.OpOverload
    maybe_inplace: torch._ops.OpOverload | None


def is_defined(name: str) -> bool:
    """Whether ``opir::<name>`` exists in torch's dispatcher (asked of the dispatcher
    itself: the ``torch.ops.opir`` namespace object has attributes such as ``name``)."""
    try:
        torch._C._dispatch_find_schema_or_throw(f"{NAMESPACE}::{name}", "")
    except RuntimeError:
        return False
    return True


def define(name: str, schema: str, inplace_schema: str | None, hooks: TorchHooks) -> TorchOp:
    """Define ``torch.ops.opir.<name>`` (and ``.maybe_inplace``); undo everything on error."""
    library = Library(NAMESPACE, "FRAGMENT")
    try:
        return _define(library, name, schema, inplace_schema, hooks)
    except Exception as e:
        library._destroy()
        raise RegistrationError(
            f"torch refused to define op '{name}' ({type(e).__name__}: {e}); nothing was "
            "registered. If the name is a TorchScript keyword (def, if, for, ...), choose "
            "another name."
        ) from e


def _define(
    library: Library, name: str, schema: str, inplace_schema: str | None, hooks: TorchHooks
) -> TorchOp:
    qualname = f"{NAMESPACE}::{name}"
    library.define(name + schema)
    library.impl(name, hooks.kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(qualname, hooks.fake, lib=library)
    library.impl(name, hooks.autograd_kernel, "Autograd")
    packet = getattr(getattr(torch.ops, NAMESPACE), name)
    donating = None
    if inplace_schema is not None:
        overload = f"{name}.maybe_inplace"
        library.define(f"{overload}{inplace_schema}")
        library.impl(overload, hooks.inplace_kernel, "CompositeExplicitAutograd")
        library.impl(overload, hooks.refuse_grad_donation, "Autograd")
        torch.library.register_fake(f"{qualname}.maybe_inplace", hooks.fake, lib=library)
        donating = packet.maybe_inplace
        if inplace_schema.endswith("-> Tensor[]"):
            _functionalize_as_default(donating, packet.default)
    return TorchOp(library, packet.default, donating)


def _functionalize_as_default(
    donating: torch._ops.OpOverload, default: torch._ops.OpOverload
) -> None:
    """Let torch's functionalization (AOTAutograd under plain ``torch.compile``) serve a
    ``maybe_inplace`` overload returning ``Tensor[]`` with the functional overload.

    ``auto_functionalize`` takes mutable custom ops returning tensors or tuples, not
    ``Tensor[]`` (rotary_embedding: ``[query]`` or ``[query, key]``). Functionalization
    decomposes a mutable op through its Python CompositeImplicitAutograd kernel before
    anything else, and donation permits writing, never requires it, so that kernel is
    the functional op. Eager dispatch keeps the CompositeExplicitAutograd kernel (the
    dispatcher resolves the explicit kernel first); ``opir.compile`` rewrites donations
    itself before AOTAutograd.
    """
    donating.py_impl(torch._C.DispatchKey.CompositeImplicitAutograd)(
        lambda *args, **kwargs: default(*args, **kwargs)
    )
