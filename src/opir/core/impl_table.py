"""An op's table of impls: registering, withdrawing and removing kernels.

A mixin of :class:`~opir.core.op.Op`, kept apart so that the Op module holds
the call path and priorities, and this one the provider-facing API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from opir.core import signature as _signature
from opir.core.errors import RegistrationError
from opir.core.impl import Impl

if TYPE_CHECKING:
    from opir.core.priority import Priority

RESERVED_PROVIDERS = frozenset({"native"})


class ImplTable:
    """``op.impls`` and the methods providers call to change it."""

    name: str
    sig: _signature.OpSignature
    schema: str
    allow_inplace: bool
    _impls: dict[str, Impl]
    _fake_fn: Callable
    _user_priority: tuple[str, ...]

    if TYPE_CHECKING:  # provided by Op

        def refresh_priority(self) -> None: ...

        def current_priority(self) -> Priority: ...

    @property
    def impls(self) -> Mapping[str, Impl]:
        """Registered impls by provider name (``native`` first)."""
        return self._impls

    def register_impl(
        self,
        provider: str,
        *,
        supported: bool = True,
        supports_args: Callable[..., bool] | None = None,
        inplace: bool = False,
        reason: str = "",
        eager: Callable | None = None,
        aliasing_safe: bool = False,
    ) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` as ``provider``'s kernel for this op.

        ``supported``: static platform/library availability (``reason`` says
        why not). ``supports_args``: per-call argument check with exactly the
        op's parameter names and defaults, returning a plain bool, also for
        fake tensors. Enable or disable providers through priority, never
        inside these predicates. ``inplace=True`` (only for ``allow_inplace``
        ops) lets the kernel write into the activations and return them.
        ``fn`` must be traceable (the torch op's kernel and the compile-time
        lowering run it); ``eager``, with the same parameters, is what the
        eager fast path calls instead, e.g. a pybind entry point that skips
        the dispatcher. Impls never need to ask whether they are being traced.
        ``aliasing_safe=True`` declares that an in-place kernel is itself correct
        when donated activations overlap (each other, or themselves); otherwise
        opir checks every ``maybe_inplace`` call and serves overlapping ones on
        clones. Float parameters may arrive as ``int`` on the eager path (as
        Python's typing allows; the torch op converts them): accept both.
        Returns ``fn`` unchanged.

        Example (``fn`` is annotated like the op: its schema must match)::

            @opir.ops.rms_norm.register_impl("mine", supports_args=my_check)
            def my_rms_norm(
                x: torch.Tensor,
                weight: torch.Tensor | None,
                epsilon: float,
                variance_size: int | None = None,
                weight_bias: float = 0.0,
                fp32_multiply: bool = False,
            ) -> torch.Tensor: ...

        Providers with kernels of their own use ``opir.providers.kit.Provider``,
        which derives all of this from the op's signature (docs/providers.md).
        """
        _signature.check_name("provider", provider)
        if provider in RESERVED_PROVIDERS:
            raise RegistrationError(
                f"provider name '{provider}' is reserved for the op's own function"
            )
        self._check_new_provider(provider)
        if not isinstance(supported, bool):
            raise RegistrationError(
                f"supported must be a bool (platform availability), got {supported!r}"
            )
        if inplace and not self.allow_inplace:
            raise RegistrationError(
                f"op '{self.name}' was not registered with allow_inplace=True, so provider "
                f"'{provider}' cannot register an inplace impl"
            )
        if supports_args is not None:
            what = f"supports_args of provider '{provider}' for op '{self.name}'"
            _signature.check_same_parameters(what, self.sig, supports_args)
        if eager is not None:
            what = f"the eager function of provider '{provider}' for op '{self.name}'"
            _signature.check_same_parameters(what, self.sig, eager)

        def decorator(fn: Callable) -> Callable:
            what = f"impl '{provider}' of op '{self.name}'"
            _signature.check_same_schema(fn, self.schema, what)
            self._check_new_provider(provider)
            impl = Impl(
                self.name,
                provider,
                fn,
                supported,
                supports_args,
                inplace,
                reason,
                eager,
                aliasing_safe,
            )
            self._impls[provider] = impl
            self.refresh_priority()
            return fn

        return decorator

    def _check_new_provider(self, provider: str) -> None:
        if provider in self._impls:
            raise RegistrationError(f"op '{self.name}' already has a '{provider}' impl")

    def register_fake(self, fn: Callable) -> Callable:
        """Replace the fake (meta) implementation; default is the native function.

        Example::

            @my_op.register_fake
            def _(x: torch.Tensor, alpha: float) -> torch.Tensor:
                return torch.empty_like(x)
        """
        _signature.check_same_schema(fn, self.schema, f"fake of op '{self.name}'")
        self._fake_fn = fn
        return fn

    def withdraw_impl(self, provider: str, reason: str) -> None:
        """Mark ``provider``'s impl unsupported from now on (e.g. its build failed).

        Priorities are rebuilt, so later calls skip it as if it had been
        registered with ``supported=False, reason=reason``.

        Example: ``opir.ops.rms_norm.withdraw_impl("cpu", "C++ build failed: ...")``
        """
        impl = self._impls[provider]
        self._impls[provider] = dataclasses.replace(impl, supported=False, reason=reason)
        self.refresh_priority()

    def set_eager(self, provider: str, eager: Callable) -> None:
        """Point ``provider``'s eager entry at ``eager`` (e.g. the launcher a provider
        loaded on its first call), so later calls skip the loading wrapper.

        ``eager`` takes the op's parameters positionally; priorities are rebuilt.
        """
        impl = self._impls[provider]
        self._impls[provider] = dataclasses.replace(impl, eager=eager)
        self.refresh_priority()

    def explicitly_requested(self, provider: str) -> bool:
        """True if the user listed ``provider`` for this op (process default or scope),
        as opposed to reaching it through the platform defaults.

        Example: ``opir.ops.rms_norm.explicitly_requested("cpu")`` -> ``False`` by default
        """
        return provider in self.current_priority().user

    def unregister_impl(self, provider: str) -> None:
        """Remove an impl (tests and benchmarks use transient providers).

        Example: ``my_op.unregister_impl("experimental")``
        """
        if provider == "native":
            raise RegistrationError("the native impl cannot be removed")
        del self._impls[provider]
        self._user_priority = tuple(p for p in self._user_priority if p != provider)
        self.refresh_priority()
