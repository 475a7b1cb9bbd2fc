"""Access tokens.

A token is self-contained: ``<expires>.<nonce>.<mac>``, where the MAC binds the app,
the expiry and a fingerprint of the app's current secret under the service's token
key. Nothing is stored per token, so tokens keep working across restarts and across
every instance that shares the token key (kept in the database, or given as
``TOPUP_TOKEN_SECRET``). Rotating an app's secret invalidates its tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from core.errors import ErrorCode, TopupError

TOKEN_LIFETIME_SECONDS = 7200


class TokenIssuer:
    def __init__(self, key: bytes, lifetime_seconds: int = TOKEN_LIFETIME_SECONDS) -> None:
        self._key = key
        self.lifetime_seconds = lifetime_seconds

    def issue(self, app_id: str, app_secret: str, now: float) -> str:
        expires = int(now) + self.lifetime_seconds
        nonce = secrets.token_hex(6)
        return f"{expires}.{nonce}.{self._mac(app_id, app_secret, expires, nonce)}"

    def check(self, token: str, app_id: str, app_secret: str, now: float) -> None:
        """Raise TopupError unless ``token`` is a live token of this app."""
        parts = token.split(".")
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):
            raise TopupError(ErrorCode.INVALID_TOKEN, "access_token 无效")
        expires, nonce, mac = int(parts[0]), parts[1], parts[2]
        expected = self._mac(app_id, app_secret, expires, nonce)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise TopupError(ErrorCode.INVALID_TOKEN, "access_token 无效或不属于该 appID")
        if expires <= now:
            raise TopupError(ErrorCode.EXPIRED_TOKEN, "access_token 已过期, 请重新获取")

    def _mac(self, app_id: str, app_secret: str, expires: int, nonce: str) -> str:
        fingerprint = hashlib.sha256(app_secret.encode()).hexdigest()[:16]
        message = f"{app_id}\n{expires}\n{nonce}\n{fingerprint}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]
