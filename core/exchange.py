"""One HTTP exchange with a supplier, and what a transport failure says about the order.

Every plugin has to tell the same two cases apart when a request goes wrong: the
request provably never left (nothing can have been credited, another supplier may
try) or it may have arrived (only a status query can tell). That reading lives here
once, so no plugin gets it subtly wrong on its own.
"""

from __future__ import annotations

from typing import Any

import httpx

from core.suppliers import SupplierResult

# Raised before a byte of the request was written: nothing reached the supplier.
# (PoolTimeout: no connection came free; ConnectTimeout/ConnectError: none was made.)
NEVER_LEFT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


async def exchange(
    client: httpx.AsyncClient, method: str, url: str, *, plugin: str, **kwargs: Any
) -> httpx.Response | SupplierResult:
    """Send one request; a transport failure comes back as the result it implies.

    - connection refused, connect or pool timeout: ``SupplierResult.not_sent`` (FAILED
      with failover), since the request never left. From ``submit`` that is the answer;
      from ``query`` it says nothing about the order: answer ``unknown`` there;
    - any other transport error (a read timeout, a dropped connection, a protocol error
      after sending): ``SupplierResult.unknown(code="TRANSPORT", ...)``, since it may have
      arrived;
    - any HTTP answer, 5xx included, is returned as it came: many suppliers say what
      happened in the body whatever the status. Read it, and use ``unknown_answer``
      when it says nothing you can rely on.

    ``plugin`` names the supplier in the messages; ``kwargs`` go to ``client.request``.
    """
    try:
        return await client.request(method, url, **kwargs)
    except NEVER_LEFT as exc:
        return SupplierResult.not_sent(message=f"{plugin} unreachable: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return SupplierResult.unknown(code="TRANSPORT", message=f"{type(exc).__name__}: {exc}")


def unknown_answer(response: httpx.Response, message: str) -> SupplierResult:
    """An answer that proves nothing (a bare 5xx, a body that is not the supplier's
    format): unknown, coded with the HTTP status so that the logs say what came back."""
    return SupplierResult.unknown(code=f"HTTP_{response.status_code}", message=message)
