"""The baseline: minimal Litestar JSON handlers, served as ``topup serve`` serves (uvicorn,
uvloop, one process), with uvicorn's httptools protocol and again with topup's own.

``GET /`` is the minimal handler the targets compare against; ``POST /`` also reads a
form body like the order call's, to show what reading a body costs by itself.
"""

from __future__ import annotations

from litestar import Litestar, Request, get, post


@get("/", sync_to_thread=False)
def minimal() -> dict[str, str]:
    return {"code": "0", "message": "成功"}


@post("/", status_code=200)
async def minimal_with_body(request: Request) -> dict[str, str | int]:
    body = await request.body()
    return {"code": "0", "message": "成功", "size": len(body)}


app = Litestar([minimal, minimal_with_body])
