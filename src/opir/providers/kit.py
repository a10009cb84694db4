"""The provider kit: declare a kernel once, get the impl the op needs.

A provider is a :class:`Provider`: its name, whether it can run here (and why
not), and a ``load`` function returning its *kernels* (a module of launchers,
imported or built on first use, never at ``import opir``). Each impl is then
one :meth:`Provider.register` call naming, for one op, the launcher in the
kernels (what eager calls run) and the provider's custom op (what tracers
record), plus the predicate; both are found by the op's name unless told
otherwise. Everything else comes from the op's own signature, so no
provider restates it:

- the custom op's schema is the op's schema (``define``); an in-place kernel's
  is the op's ``maybe_inplace`` schema returning nothing, its ``_`` name says
  so. Its fake is the op's fake (functional) or nothing (in place);
- the traceable impl calls that custom op and, in place, returns the
  activations it wrote (those that are not None; a list for a ``list[Tensor]`` op);
- the eager entry loads the kernels on the first call, then the impl's eager
  entry becomes the launcher itself (no wrapper frame on the hot path).

Load-failure policy, the same for every provider: when ``load`` raises one of
the provider's ``load_errors`` and the user did not list the provider for the
op being called (it was reached through the platform defaults), the
provider's impls are withdrawn from every op that was not explicitly asked
for it, with the reason, one warning is issued (on the ``opir`` logger
and through ``warnings.warn``), and the call is answered by the next provider. When
the user did list it, the load error is raised: asking for a provider that
cannot load is an error, never a silent fallback.

Launchers take the op's parameters positionally (impls always receive every
argument) and return the op's results; an in-place launcher returns the
tensors it wrote (the activations, or fresh ones it fell back to).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.library import CustomOpDef
from torch.library import custom_op as _torch_custom_op

from opir.core.log import get_logger
from opir.core.op import Op

_log = get_logger(__name__)


def custom_op_schema(op: Op, inplace: bool = False) -> str:
    """The schema of a provider's custom op for ``op``: the op's own, or for an
    in-place kernel the ``maybe_inplace`` schema (activations mutated) returning ()."""
    if not inplace:
        return op.schema
    if op.sig.inplace_schema is None:
        raise ValueError(f"op '{op.name}' has no in-place form (register it allow_inplace=True)")
    return op.sig.inplace_schema.rsplit("->", 1)[0] + "-> ()"


def _bad_launcher(provider: str, op: Op, name: str, kernels: Any) -> AttributeError:
    return AttributeError(
        f"provider '{provider}' registered '{name}' as a kernel of op '{op.name}', but its "
        f"kernels ({getattr(kernels, '__name__', kernels)!r}) define no '{name}'"
    )


def define(
    namespace: str,
    op: Op,
    fn: Callable[..., Any],
    *,
    inplace: bool = False,
    name: str | None = None,
    device_types: str | Sequence[str] | None = None,
    definer: Callable[..., Any] | None = None,  # torch types triton_op's result loosely
) -> CustomOpDef:
    """Define the custom op ``<namespace>::<name>`` running ``fn(*args)`` (every argument,
    defaults filled), with the op's schema (``custom_op_schema``) and fake (nothing in
    place).

    ``name`` defaults to the op's name (``<op>_`` in place). ``definer`` is
    ``torch.library.custom_op`` unless given (the triton provider passes ``triton_op``).
    """
    name = name or (f"{op.name}_" if inplace else op.name)
    kwargs: dict[str, Any] = {
        "mutates_args": op.activations if inplace else (),
        "schema": custom_op_schema(op, inplace),
    }
    if definer is None:
        definer = _torch_custom_op
        kwargs["device_types"] = device_types
    kernel = fn

    def run(*args: Any, **kwargs: Any) -> Any:  # torch passes what the caller gave
        result = kernel(*op.complete_args(args, kwargs))
        return None if inplace else result  # the in-place schema returns nothing

    run.__name__ = f"{namespace}_{name}"
    # triton_op infers the schema from the signature (it ignores schema=)
    run.__signature__ = (  # type: ignore[attr-defined]
        op.signature.replace(return_annotation=None) if inplace else op.signature
    )
    defined: CustomOpDef = definer(f"{namespace}::{name}", run, **kwargs)
    defined.register_fake(_no_result if inplace else op._fake)
    return defined


def _overload(op: Op, inplace: bool) -> Callable[..., Any]:
    """``op.maybe_inplace`` for in-place impls (ops registered with ``allow_inplace``,
    which always have it), else ``op``."""
    return cast("Callable[..., Any]", op.maybe_inplace) if inplace else op


class Provider:
    """One kernel provider: availability, lazily loaded kernels, and its impls.

    ``load`` returns the kernels (typically ``importlib.import_module`` of the
    package's ``kernels`` module, after building what it needs). ``load_errors``
    are the exceptions that mean "cannot load here" (the policy above); any
    other exception is a bug and propagates.
    """

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        availability: tuple[bool, str],
        load: Callable[[], Any],
        load_errors: tuple[type[BaseException], ...] = (ImportError,),
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.supported, self.reason = availability
        self.load_errors = load_errors
        self._load = load
        self._kernels: Any = None
        self._lock = threading.Lock()
        self._warned = False
        self.registered: list[tuple[Op, str | None]] = []
        """(op, eager launcher name) per impl, in registration order."""

    # ------------------------------------------------------------------ kernels
    def kernels(self) -> Any:
        """The loaded kernels (loading them on the first call; load errors propagate)."""
        kernels = self._kernels
        if kernels is None:
            with self._lock:
                if self._kernels is None:
                    self._kernels = self._load()
                    self._point_eager_at_launchers()
                kernels = self._kernels
        return kernels

    def _point_eager_at_launchers(self) -> None:
        for op, name in self.registered:
            if name is not None and op.impls.get(self.name) is not None:
                op.set_eager(self.name, self._launcher(op, name))

    def _launcher(self, op: Op, name: str) -> Callable[..., Any]:
        launcher = getattr(self._kernels, name, None)
        if launcher is None:
            raise _bad_launcher(self.name, op, name, self._kernels)
        return launcher

    # ------------------------------------------------------------------- impls
    def register(
        self,
        op: Op,
        supports_args: Callable[..., bool] | None,
        *,
        inplace: bool = False,
        aliasing_safe: bool = False,
        eager: str | None = "",
        custom_op: str = "",
        traceable: str | None = None,
    ) -> None:
        """Register this provider's impl of ``op``; by convention everything is found
        by the op's name, so most impls are ``PROVIDER.register(op, supports_op)``.

        ``eager``: the launcher in the kernels that eager calls run (default: the
        op's name; None: eager calls run the traceable impl). ``custom_op``: this
        provider's custom op that tracers record (default: the op's name, ``<op>_``
        in place; see ``define``); or ``traceable``: a launcher in the kernels that
        is itself traceable. ``inplace`` and ``aliasing_safe`` are ``op.register_impl``'s.
        """
        if traceable is None:
            custom_op = custom_op or (f"{op.name}_" if inplace else op.name)
        eager = op.name if eager == "" else eager
        traced = self._traceable(op, custom_op or None, traceable, inplace)
        op.register_impl(
            self.name,
            supported=self.supported,
            reason=self.reason,
            supports_args=supports_args,
            inplace=inplace,
            aliasing_safe=aliasing_safe,
            eager=None if eager is None else self._first_eager(op, eager, inplace),
        )(traced)
        self.registered.append((op, eager))

    def _traceable(
        self, op: Op, custom_op: str | None, traceable: str | None, inplace: bool
    ) -> Callable[..., Any]:
        provider = self
        activations = op.activation_positions
        as_list = op.sig.returns_list
        resolved: list[Callable[..., Any]] = []

        def resolve() -> Callable[..., Any] | None:
            kernels = provider._loaded_or_withdrawn(op)
            if kernels is None:
                return None
            if custom_op is not None:
                fn = getattr(getattr(torch.ops, provider.namespace), custom_op).default
            else:  # register() sets custom_op whenever traceable is None
                fn = provider._launcher(op, cast(str, traceable))
            resolved.append(fn)
            return fn

        def traced(*args: Any) -> Any:
            fn = resolved[0] if resolved else resolve()
            if fn is None:
                return _overload(op, inplace)(*args)
            if inplace and custom_op is not None:
                fn(*args)
                # the op's result: its activations (an optional one that is None is not
                # returned: rotary_embedding with key=None returns [query]), as a list for
                # a list[Tensor] op
                written = [args[i] for i in activations if args[i] is not None]
                return written if as_list else tuple(written)
            return fn(*args)

        return self._as_op_function(traced, op, "traceable")

    def _first_eager(self, op: Op, name: str, inplace: bool) -> Callable[..., Any]:
        """The eager entry until the kernels load (they then replace it)."""
        provider = self

        def first_call(*args: Any) -> Any:
            if provider._loaded_or_withdrawn(op) is None:
                return _overload(op, inplace)(*args)
            return provider._launcher(op, name)(*args)

        return self._as_op_function(first_call, op, "eager")

    def _as_op_function(self, fn: Callable[..., Any], op: Op, kind: str) -> Callable[..., Any]:
        fn.__signature__ = op.signature  # type: ignore[attr-defined]
        fn.__name__ = fn.__qualname__ = f"{self.name}_{op.name}_{kind}"
        return fn

    # ------------------------------------------------------------ load failure
    def _loaded_or_withdrawn(self, op: Op) -> Any:
        """The kernels; or None after withdrawing this provider (the caller re-runs
        the op); or the load error, when the user asked ``op`` for this provider."""
        try:
            return self.kernels()
        except self.load_errors as e:
            if op.explicitly_requested(self.name):
                raise
            self.withdraw(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", e)
            return None

    def withdraw(self, reason: str, error: BaseException | None = None) -> None:
        """Withdraw this provider's impls (except where the user asked for it), warning once."""
        with self._lock:
            first = not self._warned
            self._warned = True
        if first:
            message = (
                f"opir: the '{self.name}' provider is unavailable, using the next provider "
                f"instead.\n{error if error is not None else reason}"
            )
            _log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=5)
        for op, _ in self.registered:
            impl = op.impls.get(self.name)
            if impl is not None and impl.supported and not op.explicitly_requested(self.name):
                op.withdraw_impl(self.name, f"it failed to load: {reason}")


def _no_result(*args: Any) -> None:
    """The fake of an in-place custom op: it returns nothing."""
    return None
