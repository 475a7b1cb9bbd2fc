"""The order lifecycle, signing, errors and storage of topup; no HTTP, no supplier."""

from core.hookspecs import hookimpl
from core.suppliers import Outcome, Supplier, SupplierResult, UpstreamOrder

__all__ = ["Outcome", "Supplier", "SupplierResult", "UpstreamOrder", "hookimpl"]
