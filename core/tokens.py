"""Access tokens.

A token is self-contained: ``<expires>.<nonce>.<mac>``, where the MAC binds the app,
the expiry, the nonce and a fingerprint of the app secret that signed the token request,
under the service's token key. Nothing is stored per token, so tokens keep working
across restarts and on every instance that shares the token key (sealed in the
database, or given as ``TOPUP_TOKEN_SECRET``).

- The expiry counts from the request's own ``ts`` and the nonce is derived from the
  signed request, so replaying one captured token request returns the same token
  instead of minting a new one each time.
- A token made for the secret an app has since rotated away from stops working when
  that secret's grace period ends (the fingerprint no longer matches a live secret).
- An expiry further ahead than the lifetime plus the allowed clock skew cannot come
  from this service and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from core.errors import ErrorCode, TopupError

TOKEN_LIFETIME_SECONDS = 7200
# Requests' ts may be this far from the server's clock (core/partner.py checks it).
CLOCK_SKEW_SECONDS = 300

# ASCII digits only: str.isdigit() and int() also take '²', '①' or '٣'.
_EXPIRY = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[0-9a-f]{12}")
# Tokens whose MAC checked out, with the app and live secrets they were checked against:
# a partner sends one token with thousands of orders, and two HMACs per order were a
# tenth of the accept path. A rotated secret changes the key, so nothing stale is kept.
VERIFIED_CACHE_SIZE = 10_000


class TokenIssuer:
    def __init__(self, key: bytes, lifetime_seconds: int = TOKEN_LIFETIME_SECONDS) -> None:
        self._key = key
        self.lifetime_seconds = lifetime_seconds
        self._verified: set[tuple[str, str, tuple[str, ...]]] = set()

    def issue(self, app_id: str, app_secret: str, issued_at: int, request_sign: str) -> str:
        """The token for one signed token request: ``issued_at`` is the request's ts in
        seconds, ``request_sign`` its signature, so the same request yields the same token."""
        expires = issued_at + self.lifetime_seconds
        seed = f"{app_id}\n{issued_at}\n{request_sign.lower()}".encode()
        nonce = hmac.new(self._key, seed, hashlib.sha256).hexdigest()[:12]
        return f"{expires}.{nonce}.{self._mac(app_id, app_secret, expires, nonce)}"

    def expires_in(self, token: str, now: float) -> int:
        return max(0, int(token.split(".", 1)[0]) - int(now))

    def check(self, token: str, app_id: str, app_secrets: Sequence[str], now: float) -> None:
        """Raise TopupError unless ``token`` is a live token of this app, made for one of
        the secrets that sign for it now. A token verified before for the same app and
        secrets is not parsed or MACed again: only its expiry is read."""
        verified = (token, app_id, tuple(app_secrets))
        if verified not in self._verified:
            self._verify(token, app_id, app_secrets)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified.add(verified)
        expires = int(token.partition(".")[0])  # well-formed: verified above or before
        if expires <= now:
            raise TopupError(ErrorCode.EXPIRED_TOKEN, "access_token 已过期, 请重新获取")
        if expires > now + self.lifetime_seconds + CLOCK_SKEW_SECONDS:
            raise TopupError(ErrorCode.INVALID_TOKEN, "access_token 的有效期超出上限, 无效")

    def _verify(self, token: str, app_id: str, app_secrets: Sequence[str]) -> None:
        expires_text, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (_EXPIRY.fullmatch(expires_text) and _NONCE.fullmatch(nonce) and mac):
            raise TopupError(ErrorCode.INVALID_TOKEN, "access_token 格式无效")
        expires = int(expires_text)
        if not any(
            hmac.compare_digest(mac.encode(), self._mac(app_id, s, expires, nonce).encode())
            for s in app_secrets
        ):
            raise TopupError(ErrorCode.INVALID_TOKEN, "access_token 无效或不属于该 appID")

    def _mac(self, app_id: str, app_secret: str, expires: int, nonce: str) -> str:
        fingerprint = hashlib.sha256(app_secret.encode()).hexdigest()[:16]
        message = f"{app_id}\n{expires}\n{nonce}\n{fingerprint}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]
