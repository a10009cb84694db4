"""torch.compile integration: backend, passes and the compile report."""

from opir.compiler.donation import DonationError
from opir.compiler.pipeline import Backend, CompileReport, GraphReport, backend, compile

__all__ = ["Backend", "CompileReport", "DonationError", "GraphReport", "backend", "compile"]
