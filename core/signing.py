"""Request signatures.

The rule (also in the README, with a worked example a test pins down):
take every parameter except ``sign`` whose value is non-empty, sort by name in byte
order, join as ``name=value`` with ``&`` using the raw (not URL-encoded) values, and
sign the UTF-8 bytes:

- ``hmac-sha256`` (default): hex HMAC-SHA256 keyed with the app's secret;
- ``md5`` (legacy, per app): uppercase hex MD5 of the string followed by ``&key=SECRET``.

Signatures are compared case-insensitively and in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from enum import StrEnum


class SignType(StrEnum):
    HMAC_SHA256 = "hmac-sha256"
    MD5 = "md5"


def string_to_sign(params: Mapping[str, str]) -> str:
    # Python orders str by code point, and UTF-8 preserves code point order, so this
    # is the byte order of the UTF-8 names that the contract specifies.
    # Names are unique, so sorting the pairs sorts by name alone.
    pairs = sorted(params.items())
    return "&".join([f"{name}={value}" for name, value in pairs if value != "" and name != "sign"])


def compute_sign(params: Mapping[str, str], secret: str, sign_type: SignType) -> str:
    payload = string_to_sign(params)
    if sign_type is SignType.MD5:
        return hashlib.md5(f"{payload}&key={secret}".encode()).hexdigest().upper()
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def verify_sign(params: Mapping[str, str], secret: str, sign_type: SignType) -> bool:
    provided = params.get("sign", "")
    expected = compute_sign(params, secret, sign_type)
    return hmac.compare_digest(provided.lower().encode(), expected.lower().encode())
