"""A Python client for topup's partner API (the README's "The partner API").

    from topup.client import TopupClient

    with TopupClient(URL, app_id="demo", secret=SECRET, company="彩生活") as topup:
        order = topup.place_order(supplier="中国移动", phone_no="13800138000",
                                  product_id="YD10", cstm_order_no="demo-0002",
                                  cstm_order_name="物业缴费")
        final = topup.wait_for_final(order.cstm_order_no, supplier="中国移动")

``TopupClient`` (threads) and ``AsyncTopupClient`` (asyncio) behave alike: every call is
signed, the access token is fetched and refreshed before it expires, and a call whose
answer was lost (a network error, a timeout, 408, 429, 500, 502, 503, 504) is sent again
with the same parameters. For an order that is always safe: the service keys an order on
``(appID, cstmOrderNo)`` and answers a repeat with the original. ``verify_notification``
checks what the service POSTs to the partner's notify URL. docs/client.md has the rest.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

import httpx
import msgspec

from core.signing import SignType, compute_sign, verify_sign

__all__ = [
    "AsyncTopupClient",
    "Balance",
    "InvalidNotification",
    "Notification",
    "OrderAccepted",
    "OrderMayExist",
    "OrderState",
    "OrderStatus",
    "OrderStillPending",
    "Product",
    "Products",
    "Retries",
    "SignType",
    "Token",
    "TopupBadAnswer",
    "TopupClient",
    "TopupClientError",
    "TopupRefused",
    "TopupUnavailable",
    "verify_notification",
]

T = TypeVar("T")

# -- results -----------------------------------------------------------------------------------


class OrderState(StrEnum):
    """An order's ``status``, as the service spells it."""

    ACCEPTED = "0"  # 已受理: stored, not yet with a supplier
    PROCESSING = "1"  # 充值中: with a supplier, or its outcome is being confirmed
    SUCCEEDED = "2"  # 充值成功 (final)
    FAILED = "3"  # 充值失败 (final): the price is back in the balance

    @property
    def final(self) -> bool:
        return self in (OrderState.SUCCEEDED, OrderState.FAILED)


class Token(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int


class OrderAccepted(msgspec.Struct, frozen=True, rename="camel"):
    """The answer to an order: it is on the service's disk (status is always ACCEPTED)."""

    order_no: str
    cstm_order_no: str
    order_id: str
    status: OrderState


class OrderStatus(msgspec.Struct, frozen=True, rename="camel"):
    """One order as the status query shows it. Amounts in yuan; times are the service's
    text in Beijing time (``yyyy-MM-dd HH:mm:ss``; ``finish_time`` empty until final)."""

    order_no: str
    cstm_order_no: str
    order_id: str
    status: OrderState
    status_desc: str
    phone_no: str
    product_id: str
    face_value: Decimal
    price: Decimal
    fund_status: str  # held, captured (succeeded) or released (failed)
    create_time: str
    update_time: str
    finish_time: str
    fail_reason: str

    @property
    def final(self) -> bool:
        return self.status.final


class Balance(msgspec.Struct, frozen=True, rename="camel"):
    """The prepaid account, in yuan: ``available`` = ``balance`` + ``credit_limit``."""

    balance: Decimal
    held: Decimal
    credit_limit: Decimal
    available: Decimal


class Product(msgspec.Struct, frozen=True, rename="camel"):
    product_id: str
    product_name: str
    face_value: Decimal
    price: Decimal


class Products(msgspec.Struct, frozen=True):
    """What one Supplier (carrier) offers; ``supplier`` is the one the service answered for.

    Asked by ``phone_no``, ``carrier_source`` says how the service found the carrier:
    ``"segment"`` (the number-segment table) or ``"supplier:NAME"`` (that supplier's own
    lookup, which knows about ported numbers); asked by ``supplier``, it is None.
    """

    supplier: str
    products: list[Product]
    carrier_source: str | None = None


class _ProductList(msgspec.Struct):
    products: list[Product]
    carrierSource: str | None = None


class Notification(OrderStatus, frozen=True, rename="camel"):
    """A verified notification: the order's final status, plus who it is for."""

    app_id: str = msgspec.field(name="appID")
    company: str
    supplier: str = msgspec.field(name="Supplier")
    ts: int
    sign: str


class _Envelope(msgspec.Struct):
    code: str
    message: str = ""
    company: str = ""
    Supplier: str = ""
    data: msgspec.Raw = msgspec.Raw(b'""')
    errorCode: str | None = None


# -- errors ------------------------------------------------------------------------------------


class TopupClientError(Exception):
    """Everything ``topup.client`` raises. ``error_code`` is the service's ``errorCode``
    when it answered one, ``http_status`` the HTTP status when there was an answer."""

    def __init__(
        self, message: str, error_code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(f"{error_code}: {message}" if error_code else message)
        self.message = message
        self.error_code = error_code
        self.http_status = http_status


class TopupRefused(TopupClientError):
    """The service answered ``code "1"``: nothing was stored. Branch on ``error_code``."""

    error_code: str


class TopupUnavailable(TopupClientError):
    """No usable answer after every retry: network errors, timeouts, 408/429/5xx."""


class OrderMayExist(TopupUnavailable):
    """``place_order`` ran out of retries. Some try may have reached the service, so the
    order may exist: call ``place_order`` again with the same ``cstm_order_no`` and the same
    parameters (it returns the original order, never a second one), or query its status."""

    def __init__(self, cstm_order_no: str, last: TopupUnavailable) -> None:
        super().__init__(
            f"order {cstm_order_no!r} may have been placed: {last.message}. Retry place_order "
            "with the same cstm_order_no and parameters (a repeat returns the original order, "
            "never a second one), or query its status.",
            last.error_code,
            last.http_status,
        )
        self.cstm_order_no = cstm_order_no


class TopupBadAnswer(TopupClientError):
    """An answer that is not the service's envelope (e.g. a proxy's HTML page)."""


class OrderStillPending(TopupClientError):
    """``wait_for_final`` reached its deadline; ``last`` is the last status seen."""

    def __init__(self, last: OrderStatus, waited: float) -> None:
        super().__init__(
            f"order {last.cstm_order_no!r} is still {last.status.name} ({last.status_desc}) "
            f"after {waited:.0f} s; it will still end in SUCCEEDED or FAILED: query it later"
        )
        self.last = last


class InvalidNotification(TopupClientError):
    """A notification whose signature does not check out, or that cannot be read."""


# -- retries -----------------------------------------------------------------------------------


class Retries(msgspec.Struct, frozen=True):
    """How often and how patiently a call is sent again when its answer was lost."""

    attempts: int = 5  # tries in all, the first included
    first_delay: float = 0.5  # seconds before the first retry; doubles each time ...
    max_delay: float = 8.0  # ... up to this
    # A Retry-After longer than this is not waited for: the call fails at once.
    max_retry_after: float = 60.0

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based), with jitter so that many
        clients that failed together do not come back together."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** (retry - 1))
        return ceiling * random.uniform(0.5, 1.0)


# Answers that say nothing was done, or that the outcome is unknown: sending the same
# request again is safe for every call, and for an order it returns the original.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Errors after which the request may or may not have reached the service.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
TOKEN_REFUSALS = frozenset({"INVALID_TOKEN", "EXPIRED_TOKEN"})


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One partner call, before signing: its parameters without appID, ts and sign."""

    method: str
    path: str
    params: dict[str, str]
    answer: Callable[[_Envelope], T]
    with_token: bool = True
    cstm_order_no: str | None = None  # set for an order: its exhaustion says "may exist"


@dataclass(frozen=True)
class _Retry:
    """Why a try is to be repeated, and how long the service asked us to wait."""

    reason: str
    http_status: int | None = None
    error_code: str | None = None
    retry_after: float | None = None
    cause: BaseException | None = None


def _data(kind: type[T]) -> Callable[[_Envelope], T]:
    return lambda envelope: msgspec.json.decode(envelope.data, type=kind)


def _products(envelope: _Envelope) -> Products:
    listed = msgspec.json.decode(envelope.data, type=_ProductList)
    return Products(envelope.Supplier, listed.products, listed.carrierSource)


def _envelope(response: httpx.Response) -> _Envelope | None:
    """The service's envelope, or None for anything else (e.g. a proxy's error page)."""
    try:
        return msgspec.json.decode(response.content, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides


class _Protocol:
    """What both clients share, free of I/O: signing, tokens, reading answers, and the
    retry decisions. The clients only send, sleep and lock."""

    def __init__(
        self,
        app_id: str,
        secret: str,
        company: str,
        sign_type: SignType | str,
        retries: Retries,
        token_margin: float,
        clock: Callable[[], float],
    ) -> None:
        self.app_id = app_id
        self.secret = secret
        self.company = company
        self.sign_type = SignType(sign_type)
        self.retries = retries
        self.token_margin = token_margin
        self.clock = clock
        self.token: str | None = None
        self.token_expires_at = 0.0

    # signing and tokens

    def signed(self, call: _Call[Any], token: str | None) -> dict[str, str]:
        """The call's parameters as sent: a fresh ``ts`` and ``sign`` on every try."""
        params = dict(call.params)
        if call.with_token:
            params["access_token"] = token or ""
            params["company"] = self.company
        params["appID"] = self.app_id
        params["ts"] = str(int(time.time()))
        params["sign"] = compute_sign(params, self.secret, self.sign_type)
        return params

    def usable_token(self) -> str | None:
        """The cached token, unless it expires within the margin."""
        if self.token is not None and self.clock() < self.token_expires_at - self.token_margin:
            return self.token
        return None

    def token_call(self) -> _Call[Token]:
        return _Call("POST", "/sign/api/token", {}, _data(Token), with_token=False)

    def keep_token(self, grant: Token, asked_at: float) -> str:
        # expires_in counts from the request's ts, which is no later than asked_at.
        self.token, self.token_expires_at = grant.access_token, asked_at + grant.expires_in
        return grant.access_token

    def forget_token(self, token: str | None) -> None:
        """Drop a token the service refused, unless another call already replaced it."""
        if self.token == token:
            self.token = None

    # answers and retries

    def read(self, call: _Call[T], response: httpx.Response) -> T | _Retry:
        """The call's result, or a ``_Retry``; raises a refusal or an unreadable answer."""
        envelope = _envelope(response)
        if response.status_code in RETRY_STATUSES:
            said = f" {envelope.errorCode}: {envelope.message}" if envelope else ""
            return _Retry(
                f"HTTP {response.status_code}{said}",
                response.status_code,
                envelope.errorCode if envelope else None,
                _retry_after(response),
            )
        if envelope is None:
            raise TopupBadAnswer(
                f"HTTP {response.status_code} from {call.path} is not the service's envelope: "
                f"{response.content[:200]!r}",
                http_status=response.status_code,
            )
        if envelope.code != "0":
            raise TopupRefused(envelope.message, envelope.errorCode or "", response.status_code)
        try:
            return call.answer(envelope)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TopupBadAnswer(
                f"{call.path}: unexpected data {bytes(envelope.data)[:200]!r}: {exc}",
                http_status=response.status_code,
            ) from exc

    @staticmethod
    def lost(exc: httpx.HTTPError) -> _Retry:
        return _Retry(f"{type(exc).__name__}: {exc}", cause=exc)

    def delay_or_give_up(self, call: _Call[Any], tries: int, retry: _Retry) -> float:
        """Seconds to wait before the next try; raises once the retries are spent."""
        waited = retry.retry_after or 0.0
        if waited > self.retries.max_retry_after:
            why = f"the service asks to wait {waited:g} s (Retry-After) after {retry.reason}"
        elif tries >= self.retries.attempts:
            why = f"no answer after {tries} tries (last: {retry.reason})"
        else:
            return max(waited, self.retries.backoff(tries))
        unavailable = TopupUnavailable(f"{call.path}: {why}", retry.error_code, retry.http_status)
        if call.cstm_order_no is not None:
            raise OrderMayExist(call.cstm_order_no, unavailable) from retry.cause
        raise unavailable from retry.cause


def _order_call(
    supplier: str, phone_no: str, product_id: str, cstm_order_no: str, cstm_order_name: str
) -> _Call[OrderAccepted]:
    params = {
        "Supplier": supplier,
        "phoneNo": phone_no,
        "productId": product_id,
        "cstmOrderNo": cstm_order_no,
        "cstmOrderName": cstm_order_name,
    }
    return _Call(
        "POST", "/sign/api/order", params, _data(OrderAccepted), cstm_order_no=cstm_order_no
    )


def _status_call(cstm_order_no: str, supplier: str, order_no: str | None) -> _Call[OrderStatus]:
    params = {"Supplier": supplier, "cstmOrderNo": cstm_order_no}
    if order_no:
        params["orderNo"] = order_no
    return _Call("GET", "/sign/api/order/status", params, _data(OrderStatus))


def _balance_call() -> _Call[Balance]:
    return _Call("GET", "/sign/api/balance", {}, _data(Balance))


def _products_call(supplier: str | None, phone_no: str | None) -> _Call[Products]:
    if (supplier is None) == (phone_no is None):
        raise ValueError("products() takes exactly one of supplier and phone_no")
    params = {"Supplier": supplier} if supplier is not None else {"phoneNo": phone_no or ""}
    return _Call("GET", "/sign/api/products", params, _products)


class _Polls:
    """The waits of ``wait_for_final``: growing from ``first`` to ``longest``, never past
    the deadline."""

    def __init__(self, clock: Callable[[], float], timeout: float, first: float, longest: float):
        self.clock, self.started = clock, clock()
        self.deadline = self.started + timeout
        self.next, self.longest = first, longest

    def wait(self) -> float | None:
        """Seconds to sleep before the next query, or None once the deadline has passed."""
        left = self.deadline - self.clock()
        if left <= 0:
            return None
        wait, self.next = min(self.next, left), min(self.next * 1.5, self.longest)
        return wait

    def waited(self) -> float:
        return self.clock() - self.started


def _http_options(
    base_url: str, timeout: float | httpx.Timeout, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "timeout": timeout,
        "headers": {"user-agent": "topup-client", **(headers or {})},
        # A 3xx is no answer of the service's: it must not be followed as one.
        "follow_redirects": False,
    }


# -- the clients -------------------------------------------------------------------------------


class TopupClient:
    """The partner API from ordinary (threaded) code. Thread-safe; one per app.

    ``clock`` (monotonic seconds) times the token's lifetime and ``wait_for_final``'s
    deadline; ``transport`` replaces httpx's, e.g. for tests or a proxy.
    """

    def __init__(
        self,
        base_url: str,
        *,
        app_id: str,
        secret: str,
        company: str,
        sign_type: SignType | str = SignType.HMAC_SHA256,
        timeout: float | httpx.Timeout = 10.0,
        retries: Retries | None = None,
        token_margin: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._protocol = _Protocol(
            app_id, secret, company, sign_type, retries or Retries(), token_margin, clock
        )
        self._http = httpx.Client(transport=transport, **_http_options(base_url, timeout, headers))
        self._token_lock = threading.Lock()

    def __enter__(self) -> TopupClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def access_token(self) -> str:
        """A token valid for at least ``token_margin`` more seconds, fetched if need be;
        one thread fetches while the others wait for it."""
        token = self._protocol.usable_token()
        if token is not None:
            return token
        with self._token_lock:
            token = self._protocol.usable_token()
            if token is None:
                asked_at = self._protocol.clock()
                grant = self._send(self._protocol.token_call(), None)
                token = self._protocol.keep_token(grant, asked_at)
            return token

    def place_order(
        self,
        *,
        supplier: str,
        phone_no: str,
        product_id: str,
        cstm_order_no: str,
        cstm_order_name: str,
    ) -> OrderAccepted:
        """Place an order (产品订购). Lost answers are retried with the same parameters, so
        this makes at most one order per ``cstm_order_no``; calling it again with the same
        ``cstm_order_no`` returns the original. Raises OrderMayExist when out of retries."""
        call = _order_call(supplier, phone_no, product_id, cstm_order_no, cstm_order_name)
        return self._call(call)

    def status(
        self, cstm_order_no: str, *, supplier: str, order_no: str | None = None
    ) -> OrderStatus:
        """Query an order (订单状态查询); the source of truth about it."""
        return self._call(_status_call(cstm_order_no, supplier, order_no))

    def balance(self) -> Balance:
        return self._call(_balance_call())

    def products(self, supplier: str | None = None, phone_no: str | None = None) -> Products:
        """A Supplier's products; or, given ``phone_no`` instead, those of the carrier the
        service finds for that number."""
        return self._call(_products_call(supplier, phone_no))

    def wait_for_final(
        self,
        cstm_order_no: str,
        *,
        supplier: str,
        timeout: float = 120.0,
        first_poll: float = 0.5,
        max_poll: float = 10.0,
    ) -> OrderStatus:
        """Query the order until it is SUCCEEDED or FAILED; raises OrderStillPending at
        the deadline (the order stays open: query it later)."""
        polls = _Polls(self._protocol.clock, timeout, first_poll, max_poll)
        while True:
            current = self.status(cstm_order_no, supplier=supplier)
            if current.final:
                return current
            wait = polls.wait()
            if wait is None:
                raise OrderStillPending(current, polls.waited())
            time.sleep(wait)

    def _call(self, call: _Call[T]) -> T:
        token = self.access_token()
        try:
            return self._send(call, token)
        except TopupRefused as refused:
            if refused.error_code not in TOKEN_REFUSALS:
                raise
        # The service no longer takes this token (its key changed, or our clock ran slow):
        # once with a new one. A refused request stored nothing, so this is safe for orders.
        self._protocol.forget_token(token)
        return self._send(call, self.access_token())

    def _send(self, call: _Call[T], token: str | None) -> T:
        tries = 0
        while True:
            tries += 1
            params = self._protocol.signed(call, token)
            try:
                if call.method == "GET":
                    response = self._http.get(call.path, params=params)
                else:
                    response = self._http.post(call.path, data=params)
            except RETRY_ERRORS as exc:
                outcome: T | _Retry = self._protocol.lost(exc)
            else:
                outcome = self._protocol.read(call, response)
            if not isinstance(outcome, _Retry):
                return outcome
            time.sleep(self._protocol.delay_or_give_up(call, tries, outcome))


class AsyncTopupClient:
    """The partner API from asyncio code; the same calls as TopupClient, awaited. Safe to
    share between tasks: concurrent calls wait for one token fetch."""

    def __init__(
        self,
        base_url: str,
        *,
        app_id: str,
        secret: str,
        company: str,
        sign_type: SignType | str = SignType.HMAC_SHA256,
        timeout: float | httpx.Timeout = 10.0,
        retries: Retries | None = None,
        token_margin: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._protocol = _Protocol(
            app_id, secret, company, sign_type, retries or Retries(), token_margin, clock
        )
        self._http = httpx.AsyncClient(
            transport=transport, **_http_options(base_url, timeout, headers)
        )
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncTopupClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def access_token(self) -> str:
        token = self._protocol.usable_token()
        if token is not None:
            return token
        async with self._token_lock:
            token = self._protocol.usable_token()
            if token is None:
                asked_at = self._protocol.clock()
                grant = await self._send(self._protocol.token_call(), None)
                token = self._protocol.keep_token(grant, asked_at)
            return token

    async def place_order(
        self,
        *,
        supplier: str,
        phone_no: str,
        product_id: str,
        cstm_order_no: str,
        cstm_order_name: str,
    ) -> OrderAccepted:
        call = _order_call(supplier, phone_no, product_id, cstm_order_no, cstm_order_name)
        return await self._call(call)

    async def status(
        self, cstm_order_no: str, *, supplier: str, order_no: str | None = None
    ) -> OrderStatus:
        return await self._call(_status_call(cstm_order_no, supplier, order_no))

    async def balance(self) -> Balance:
        return await self._call(_balance_call())

    async def products(self, supplier: str | None = None, phone_no: str | None = None) -> Products:
        return await self._call(_products_call(supplier, phone_no))

    async def wait_for_final(
        self,
        cstm_order_no: str,
        *,
        supplier: str,
        timeout: float = 120.0,  # noqa: ASYNC109 (a deadline for the polling, not one I/O)
        first_poll: float = 0.5,
        max_poll: float = 10.0,
    ) -> OrderStatus:
        polls = _Polls(self._protocol.clock, timeout, first_poll, max_poll)
        while True:
            current = await self.status(cstm_order_no, supplier=supplier)
            if current.final:
                return current
            wait = polls.wait()
            if wait is None:
                raise OrderStillPending(current, polls.waited())
            await asyncio.sleep(wait)

    async def _call(self, call: _Call[T]) -> T:
        token = await self.access_token()
        try:
            return await self._send(call, token)
        except TopupRefused as refused:
            if refused.error_code not in TOKEN_REFUSALS:
                raise
        self._protocol.forget_token(token)
        return await self._send(call, await self.access_token())

    async def _send(self, call: _Call[T], token: str | None) -> T:
        tries = 0
        while True:
            tries += 1
            params = self._protocol.signed(call, token)
            try:
                if call.method == "GET":
                    response = await self._http.get(call.path, params=params)
                else:
                    response = await self._http.post(call.path, data=params)
            except RETRY_ERRORS as exc:
                outcome: T | _Retry = self._protocol.lost(exc)
            else:
                outcome = self._protocol.read(call, response)
            if not isinstance(outcome, _Retry):
                return outcome
            await asyncio.sleep(self._protocol.delay_or_give_up(call, tries, outcome))


# -- notifications -----------------------------------------------------------------------------


def verify_notification(
    notification: Mapping[str, str] | bytes | str,
    secret: str | Iterable[str],
    sign_type: SignType | str = SignType.HMAC_SHA256,
    *,
    max_age: float | None = None,
) -> Notification:
    """Check a notification the service POSTed to the partner's notify URL, and read it.

    ``notification`` is its form fields (any mapping of str to str, e.g. a framework's
    parsed form) or the raw ``application/x-www-form-urlencoded`` body. ``secret`` may be
    several secrets (during a rotation, the new one signs as soon as it exists). With
    ``max_age``, a notification whose ``ts`` is older than that many seconds is refused.
    Raises InvalidNotification. Answer the service ``success`` once it is handled;
    deliveries can repeat, so handle one order's notification idempotently.
    """
    fields = _form_fields(notification)
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not fields.get("sign"):
        raise InvalidNotification("the notification has no sign")
    if not any(verify_sign(fields, each, SignType(sign_type)) for each in secrets):
        raise InvalidNotification("the notification's sign does not match its fields")
    try:
        verified = msgspec.convert(fields, type=Notification, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidNotification(f"the notification cannot be read: {exc}") from exc
    if max_age is not None and time.time() - _seconds(verified.ts) > max_age:
        raise InvalidNotification(f"the notification is older than {max_age:g} s")
    return verified


def _form_fields(notification: Mapping[str, str] | bytes | str) -> dict[str, str]:
    if isinstance(notification, Mapping):
        return {str(name): str(value) for name, value in notification.items()}
    try:
        text = notification.decode() if isinstance(notification, bytes) else notification
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidNotification(f"the notification is not form data: {exc}") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        if fields.setdefault(name, value) != value:
            raise InvalidNotification(f"the notification has two values for {name}")
    return fields


def _seconds(ts: int) -> float:
    """``ts`` in seconds, whether it was sent in seconds or milliseconds."""
    return ts / 1000 if ts >= 100_000_000_000 else ts
