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

from core.exchange import exchange, unknown_answer
from core.hookspecs import hookimpl
from core.money import yuan_to_fen
from core.suppliers import (
    Callback,
    CallbackReply,
    CallbackRequest,
    ErrorClass,
    ErrorTable,
    FailReason,
    NoSettings,
    Outcome,
    StatementLine,
    Supplier,
    SupplierConfigError,
    SupplierResult,
    UpstreamOrder,
    alerts,
    classify_error,
    read_statement_csv,
    secret_from_env,
)

__all__ = [
    "Callback",
    "CallbackReply",
    "CallbackRequest",
    "ErrorClass",
    "ErrorTable",
    "FailReason",
    "NoSettings",
    "Outcome",
    "StatementLine",
    "Supplier",
    "SupplierConfigError",
    "SupplierResult",
    "UpstreamOrder",
    "alerts",
    "classify_error",
    "exchange",
    "hookimpl",
    "read_statement_csv",
    "secret_from_env",
    "unknown_answer",
    "yuan_to_fen",
]
