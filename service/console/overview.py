"""概览: the page an operator on duty opens first."""

from __future__ import annotations

from litestar import Request, get
from litestar.response import Template

from service.console.render import page


@get("/", name="console-overview", include_in_schema=False)
async def overview(request: Request) -> Template:
    return page(request, "overview.html")
