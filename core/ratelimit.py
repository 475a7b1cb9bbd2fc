"""Abuse limits on the partner API: rate limits per client address and per app, the
failed-signature lock, and which address a request comes from.

Everything here is kept in this process's memory: with several processes or instances
each keeps its own counts, so the limits hold per process. Nothing here knows HTTP: the
service hands in the peer address and the X-Forwarded-For text as plain strings.

The buckets use GCRA (the generic cell rate algorithm), a token bucket that stores one
float per key, the "theoretical arrival time": a call is allowed while that time is at
most ``burst - 1`` intervals ahead of now, and each allowed call moves it one interval
(``1 / rate``) on. A key whose time has passed has a full bucket, the same as no entry,
so idle keys are simply dropped. A library bucket (``limits``, ``pyrate-limiter``) costs
several microseconds and a lock per call; this costs a dictionary lookup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import lru_cache
from itertools import islice

from core.addresses import Network, address_in
from core.config import LimitsConfig
from core.errors import ErrorCode, TopupError

# How often idle buckets are dropped even when no limit is near its size.
SWEEP_SECONDS = 60.0
# An X-Forwarded-For hop longer than any IP address is cut here before it becomes a key.
MAX_ADDRESS_LENGTH = 64


class RateLimited(TopupError):
    """A RATE_LIMITED refusal; ``retry_after``: whole seconds until a retry can pass."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message, 429)
        self.retry_after = retry_after


def whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


class KeyedLimiter:
    """A token bucket per key: ``rate`` per second, up to ``burst`` at once (rate 0: off).

    At most ``max_keys`` buckets are kept: idle ones are dropped every ``SWEEP_SECONDS``
    and whenever the limit is reached; if that is not enough, the oldest quarter goes
    (those keys start again with a full bucket: generous, but memory stays bounded).
    """

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self._arrivals: dict[str, float] = {}
        self._next_sweep = 0.0
        self.configure(rate, burst, max_keys)

    def configure(self, rate: float, burst: int, max_keys: int) -> None:
        """New settings; the counts so far are kept."""
        self.rate = rate
        self._interval = 1.0 / rate if rate else 0.0
        self._tolerance = (burst - 1) * self._interval
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._arrivals)

    def take(self, key: str, now: float) -> float:
        """Count one call for ``key``: 0.0 when allowed, else the seconds to wait."""
        if not self._interval:
            return 0.0
        arrivals = self._arrivals
        due = arrivals.get(key)
        if due is None:
            if len(arrivals) >= self._max_keys:
                self._make_room(now)
            due = now
        elif due < now:
            due = now
        wait = due - now - self._tolerance
        if wait > 0:
            return wait
        arrivals[key] = due + self._interval
        if now >= self._next_sweep:
            self._sweep(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_SECONDS
        idle = [key for key, due in self._arrivals.items() if due <= now]
        for key in idle:
            del self._arrivals[key]

    def _make_room(self, now: float) -> None:
        self._sweep(now)
        excess = len(self._arrivals) - self._max_keys * 3 // 4
        if excess > 0:
            # Dictionaries keep insertion order: these are the keys first seen longest ago.
            for key in list(islice(self._arrivals, excess)):
                del self._arrivals[key]


class SignatureLock:
    """Counts wrong signatures per appID; past the budget, locks them out for a while.

    Only wrong signatures are counted and only they are refused: a stranger who knows an
    appID can lock its wrong-signature answers, never its correctly signed calls.
    """

    def __init__(self, allowed: int, window: float, lock_seconds: float, max_keys: int) -> None:
        self._budget = KeyedLimiter(0, 1, max_keys)
        self._locked_until: dict[str, float] = {}
        self.configure(allowed, window, lock_seconds, max_keys)

    def configure(self, allowed: int, window: float, lock_seconds: float, max_keys: int) -> None:
        self._budget.configure(allowed / window, allowed, max_keys)
        self._lock_seconds = lock_seconds
        self._max_keys = max_keys

    def remaining(self, key: str, now: float) -> float:
        """Seconds the lock on ``key`` has left (0.0: not locked)."""
        until = self._locked_until.get(key)
        return until - now if until is not None and until > now else 0.0

    def failed(self, app_id: str, now: float) -> float:
        """Count a wrong signature: 0.0 to answer it as such, else the seconds the lock
        has left (this failure tripped it, or it was already on; then it is not counted)."""
        until = self._locked_until.get(app_id)
        if until is not None:
            if until > now:
                return until - now
            del self._locked_until[app_id]
        if not self._budget.take(app_id, now):
            return 0.0
        if len(self._locked_until) >= self._max_keys:
            self._locked_until = {k: u for k, u in self._locked_until.items() if u > now}
        self._locked_until[app_id] = now + self._lock_seconds
        return self._lock_seconds


class AbuseGuard:
    """The limits of one process, reconfigured in place on ``topup reload``."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_address = KeyedLimiter(0, 1, config.max_tracked)
        self._by_app = KeyedLimiter(0, 1, config.max_tracked)
        self._signatures = SignatureLock(1, 1, 1, config.max_tracked)
        self.configure(config)

    def configure(self, config: LimitsConfig) -> None:
        self._by_address.configure(config.ip_rate, config.ip_burst, config.max_tracked)
        self._by_app.configure(config.app_rate, config.app_burst, config.max_tracked)
        self._signatures.configure(
            config.bad_signatures,
            config.bad_signature_window,
            config.bad_signature_lock,
            config.max_tracked,
        )
        self.proxies = ClientAddresses(config.proxy_networks)

    def check_address(self, address: str) -> None:
        """Count a request from ``address``; raises RateLimited past its budget."""
        self._take(self._by_address, address, "来自 {} 的请求")

    def check_app(self, app_id: str) -> None:
        """Count a correctly signed request of ``app_id``; raises RateLimited past its budget."""
        self._take(self._by_app, app_id, "appID {} 的请求")

    def _take(self, limiter: KeyedLimiter, key: str, whose: str) -> None:
        """``whose``: a template for the refusal, formatted only when there is one."""
        wait = limiter.take(key, self._clock())
        if wait:
            seconds = whole_seconds(wait)
            raise RateLimited(
                f"请求过于频繁: {whose.format(key)}超过每秒 {limiter.rate:g} 次; "
                f"请在 {seconds} 秒后重试, 本次请求未被受理",
                seconds,
            )

    def signature_failed(self, app_id: str) -> RateLimited | None:
        """Count a wrong signature for ``app_id``: the refusal to give instead of
        BAD_SIGNATURE while the appID is locked, else None."""
        wait = self._signatures.failed(app_id, self._clock())
        if not wait:
            return None
        seconds = whole_seconds(wait)
        return RateLimited(
            f"appID {app_id} 签名错误次数过多: {seconds} 秒内签名错误的请求一律拒绝; "
            "正确签名的请求不受影响",
            seconds,
        )


class ClientAddresses:
    """Which address a request comes from, believing X-Forwarded-For only from a trusted
    proxy: the right-most address in it that is not itself a trusted proxy (the one the
    nearest trusted proxy saw; everything left of it the client may have written)."""

    def __init__(self, trusted: tuple[Network, ...]):
        self.trusted = trusted
        # Proxies are few: a small cache keeps parsing off the path of each request.
        self.is_trusted = lru_cache(maxsize=1024)(self._is_trusted)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if hop and not self.is_trusted(hop):
                return hop[:MAX_ADDRESS_LENGTH]
        # Every hop is a trusted proxy: the left-most one is as far back as we can see.
        return next((hop for hop in hops if hop), peer)[:MAX_ADDRESS_LENGTH]

    def _is_trusted(self, address: str) -> bool:
        return address_in(address, self.trusted)


# Wrong passwords allowed per name, and per address (an office shares one), within the
# window; the next one locks for SIGN_IN_LOCK seconds.
SIGN_IN_FAILURES = 5
SIGN_IN_FAILURES_PER_ADDRESS = 20
SIGN_IN_WINDOW = 300.0
SIGN_IN_LOCK = 900.0


class SignInThrottle:
    """Failed console sign-ins per operator name and per client address (in this
    process): past the budget, sign-ins for that name or from that address are refused
    for a while, whatever the password."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # A lock trips on the failure past its budget: the SIGN_IN_FAILURES-th one.
        self._by_name = SignatureLock(SIGN_IN_FAILURES - 1, SIGN_IN_WINDOW, SIGN_IN_LOCK, 100_000)
        self._by_address = SignatureLock(
            SIGN_IN_FAILURES_PER_ADDRESS - 1, SIGN_IN_WINDOW, SIGN_IN_LOCK, 100_000
        )

    def locked_for(self, name: str, address: str) -> float:
        now = self._clock()
        return max(self._by_name.remaining(name, now), self._by_address.remaining(address, now))

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        self._by_name.failed(name, now)
        self._by_address.failed(address, now)
