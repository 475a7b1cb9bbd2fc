"""The console's router: every page under ``/console``, behind the sign-in guard."""

from __future__ import annotations

from litestar import Router
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.static_files import create_static_files_router

from service.console import (
    audit,
    auth,
    operators,
    orders,
    overview,
    partners,
    reconcile,
    review,
    suppliers,
)
from service.console.render import STATIC, ConsoleError, page

# Each page module's handlers or controllers; a new page is appended here.
PAGES: list = [
    *overview.route_handlers,
    *orders.route_handlers,
    *review.route_handlers,
    *partners.route_handlers,
    *suppliers.route_handlers,
    *reconcile.route_handlers,
    *audit.route_handlers,
    *operators.route_handlers,
]


def _console_error(request, exc: ConsoleError):
    return page(request, "error.html", status_code=400, title="无法完成", message=exc.detail)


def console_router() -> Router:
    return Router(
        path=auth.CONSOLE,
        route_handlers=[
            auth.login_form,
            auth.login,
            auth.logout,
            *PAGES,
            create_static_files_router(
                path="/static",
                directories=[STATIC],
                opt={"public": True},
                include_in_schema=False,
                # Static files change with a release; browsers may keep them a while.
                cache_control=None,
            ),
        ],
        guards=[auth.console_guard],
        exception_handlers={
            NotAuthorizedException: auth.signed_out,
            PermissionDeniedException: auth.refused,
            ConsoleError: _console_error,
        },
        include_in_schema=False,
    )
