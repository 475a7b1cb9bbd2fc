"""The public API for supplier plugin authors.

    import topup

    class Acme(topup.Supplier):
        name = "acme"
        ...

    @topup.hookimpl
    def register_suppliers(register):
        register(Acme)

Everything a plugin needs is importable from here; the modules behind it
(``core.*``) are internal and may move.
"""

from core.hookspecs import hookimpl
from core.suppliers import NoSettings, Outcome, Supplier, SupplierResult, UpstreamOrder

__all__ = ["NoSettings", "Outcome", "Supplier", "SupplierResult", "UpstreamOrder", "hookimpl"]
