"""How a fault bends the answer a submit actually gets.

Apart from faults.py so that ``topup simulate`` (which only parses fault names) starts
without importing the web framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar import Response

from service.simulator.faults import ActiveFaults

# What a misconfigured proxy in front of a supplier tends to send back.
GARBAGE_BODY = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"


# Faults answered in the protocol's own words, which each protocol supplies: "busy" is its
# documented "system busy" (outcome unknown), "undocumented_error" a code no document lists.
CODED_FAULTS = ("busy", "undocumented_error")


async def bend_submit_answer(
    faults: ActiveFaults, answer: Response, coded: Callable[[str], Response]
) -> Response:
    """The answer a submit actually gets; the top-up itself is already made (or refused).

    ``coded(fault)`` is the protocol's answer for one of ``CODED_FAULTS``."""
    if "slow" in faults:
        await asyncio.sleep(faults.seconds("slow"))
    if "timeout" in faults:
        # Held without blocking the loop; whoever still listens afterwards sees a gateway give up.
        await asyncio.sleep(faults.seconds("timeout"))
        return Response(b"", status_code=504, media_type="text/plain")
    if "error_after_topup" in faults:
        return Response(b"Internal Server Error", status_code=500, media_type="text/plain")
    if "garbage" in faults:
        return Response(GARBAGE_BODY, status_code=200, media_type="text/html")
    for fault in CODED_FAULTS:
        if fault in faults:
            return coded(fault)
    return answer
