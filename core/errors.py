"""Partner-facing error codes.

Every refusal a partner can receive is one of these codes. The code is the stable,
machine-readable part of the contract; the message (Chinese, as the seed's
messages are) explains the particular case and may change wording between releases.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable reasons for a response with code "1".

    The README's error table is generated from the docstrings in ``ERROR_DOCS``;
    a test checks that every code is documented there.
    """

    MISSING_PARAMETER = "MISSING_PARAMETER"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    DUPLICATE_PARAMETER = "DUPLICATE_PARAMETER"
    UNDECODABLE_BODY = "UNDECODABLE_BODY"
    UNKNOWN_APP = "UNKNOWN_APP"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    MALFORMED_TIMESTAMP = "MALFORMED_TIMESTAMP"
    STALE_TIMESTAMP = "STALE_TIMESTAMP"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    INVALID_TOKEN = "INVALID_TOKEN"
    EXPIRED_TOKEN = "EXPIRED_TOKEN"
    COMPANY_MISMATCH = "COMPANY_MISMATCH"
    UNKNOWN_SUPPLIER = "UNKNOWN_SUPPLIER"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    INVALID_PHONE = "INVALID_PHONE"
    CARRIER_MISMATCH = "CARRIER_MISMATCH"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    ORDER_CONFLICT = "ORDER_CONFLICT"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    ORDER_NO_MISMATCH = "ORDER_NO_MISMATCH"
    SUPPLIER_MISMATCH = "SUPPLIER_MISMATCH"
    RATE_LIMITED = "RATE_LIMITED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


ERROR_DOCS: dict[ErrorCode, str] = {
    ErrorCode.MISSING_PARAMETER: "A required parameter is absent or empty; the message names it.",
    ErrorCode.INVALID_PARAMETER: (
        "A parameter has the wrong type or shape (not a string, too long, bad characters)."
    ),
    ErrorCode.DUPLICATE_PARAMETER: "The same parameter was sent twice with different values.",
    ErrorCode.UNDECODABLE_BODY: (
        "The body is not valid UTF-8 form data (URL-encoded or multipart) or a JSON object, "
        "its Content-Type is none of these, or it is over 64 KiB (413)."
    ),
    ErrorCode.UNKNOWN_APP: "No partner app is registered under this appID.",
    ErrorCode.IP_NOT_ALLOWED: (
        "The app has an IP allowlist and the request did not come from an address on it."
    ),
    ErrorCode.MALFORMED_TIMESTAMP: "ts is not Unix time in seconds (10 digits) or milliseconds.",
    ErrorCode.STALE_TIMESTAMP: "ts is more than 300 seconds away from the server's clock.",
    ErrorCode.BAD_SIGNATURE: "sign does not match the parameters and the app's secret.",
    ErrorCode.INVALID_TOKEN: "access_token was not issued by this service for this appID.",
    ErrorCode.EXPIRED_TOKEN: "access_token has expired; request a new one from /sign/api/token.",
    ErrorCode.COMPANY_MISMATCH: "company is not the company registered for this appID.",
    ErrorCode.UNKNOWN_SUPPLIER: "No route is configured for this Supplier name.",
    ErrorCode.UNKNOWN_PRODUCT: "The Supplier offers no product with this productId.",
    ErrorCode.INVALID_PHONE: (
        "phoneNo is not an 11-digit mainland China mobile number, or (products by phoneNo) "
        "its segment is allocated to no carrier."
    ),
    ErrorCode.CARRIER_MISMATCH: (
        "The app refuses orders whose Supplier is not the carrier of phoneNo's number "
        "segment (`topup app set --carrier-mismatch refuse`); nothing was stored."
    ),
    ErrorCode.INSUFFICIENT_BALANCE: (
        "The app's balance plus credit limit does not cover the product's price; nothing "
        "was stored."
    ),
    ErrorCode.ORDER_CONFLICT: (
        "This cstmOrderNo already names an order with a different phoneNo, productId or "
        "Supplier; the original order is unchanged."
    ),
    ErrorCode.ORDER_NOT_FOUND: "This app has no order with this cstmOrderNo.",
    ErrorCode.ORDER_NO_MISMATCH: "orderNo was given and is not the orderNo of this cstmOrderNo.",
    ErrorCode.SUPPLIER_MISMATCH: "The order exists but was placed with a different Supplier.",
    ErrorCode.RATE_LIMITED: (
        "Too many requests from this app or this address, or too many bad signatures for "
        "this appID; wait for Retry-After seconds. Nothing was accepted."
    ),
    ErrorCode.NOT_FOUND: "No API at this path.",
    ErrorCode.METHOD_NOT_ALLOWED: "The API exists but not with this HTTP method.",
    ErrorCode.REQUEST_TIMEOUT: (
        "The request (headers and body) did not arrive in full within the request timeout "
        "(10 seconds by default); the connection is closed and nothing was accepted."
    ),
    ErrorCode.SERVICE_UNAVAILABLE: (
        "The service could not store or read the request right now; nothing was accepted. "
        "Retry with the same cstmOrderNo."
    ),
    ErrorCode.INTERNAL_ERROR: (
        "An unexpected error; nothing was accepted unless a later query with the same "
        "cstmOrderNo shows the order."
    ),
}


class TopupError(Exception):
    """A refusal with a partner-facing code and message.

    ``http_status`` stays 200 for business refusals (the seed's convention); protocol
    errors (a body too large, a wrong method) carry their own.
    """

    def __init__(self, code: ErrorCode, message: str, http_status: int = 200) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
