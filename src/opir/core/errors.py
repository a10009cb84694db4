"""Exception types. Each message names the problem and the fix."""


class OpirError(Exception):
    """Base class of every error opir raises on purpose."""


class RegistrationError(OpirError, ValueError):
    """An op, impl or fake was declared wrongly; nothing was registered."""


class PriorityError(OpirError, ValueError):
    """A priority list or config names an unknown op/provider or is malformed."""


class DispatchError(OpirError, RuntimeError):
    """No acceptable impl under the active rules (strict mode)."""
