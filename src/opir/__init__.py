"""opir: one native definition per LLM-inference op, many kernel providers.

Import order matters and is fixed here: ops first, then the built-in
providers, then third-party plugins, then ``OPIR_PRIORITY`` (which may name
any of them).
"""

from typing import cast

from opir import distributed, layers, ops, providers
from opir.compiler import DonationError, backend, compile
from opir.core.config import apply_env as _apply_env
from opir.core.config import get_priority, load_priority, priority, set_default, set_priority
from opir.core.errors import DispatchError, OpirError, PriorityError, RegistrationError
from opir.core.impl import Impl
from opir.core.op import InplaceOp, Op
from opir.core.platform import Platform
from opir.core.platform import detect as platform
from opir.core.plugins import load_plugins as _load_plugins
from opir.core.priority import Priority
from opir.core.register import register_op
from opir.core.registry import ops as _registered
from opir.core.registry import set_platform_defaults
from opir.core.scope import Scope, strict, trace
from opir.core.selection import Selection
from opir.core.tolerances import Tolerance
from opir.core.trace import DispatchRecord, Trace

registry = cast(dict[str, Op], _registered)
"""Every registered op by name (the registry's own dict; core types it by the OpLike
protocol to keep its modules out of an import circle, and every entry is an Op)."""

_load_plugins()
_apply_env()

__version__ = "0.2.0"

__all__ = [
    "DonationError",
    "backend",
    "compile",
    "distributed",
    "DispatchError",
    "DispatchRecord",
    "Impl",
    "InplaceOp",
    "Op",
    "OpirError",
    "Platform",
    "Priority",
    "PriorityError",
    "RegistrationError",
    "Scope",
    "Selection",
    "Tolerance",
    "Trace",
    "get_priority",
    "layers",
    "load_priority",
    "ops",
    "platform",
    "priority",
    "providers",
    "register_op",
    "registry",
    "set_default",
    "set_platform_defaults",
    "set_priority",
    "strict",
    "trace",
]
