"""概览: the page an operator on duty opens first.

The numbers come from core/overview.py (bounded reads, see BENCHMARKS.md "Console at 1M
orders"; the day's per-plugin figures are read once a minute per process); the live part
is a fragment of its own that the page fetches again every ten seconds (``data-refresh``
in static/console.js).
"""

from __future__ import annotations

from litestar import Request, get
from litestar.response import Template

from core.circuits import open_circuits
from core.clock import beijing_time
from core.overview import Overview, OverviewReader
from service.console.render import page, services

REFRESH_SECONDS = 10
SPARK_WIDTH, SPARK_HEIGHT = 600, 64


@get("/", name="console-overview", include_in_schema=False)
async def overview(request: Request) -> Template:
    return page(request, "overview.html", refresh=REFRESH_SECONDS, **await _numbers(request))


@get("/overview/live", include_in_schema=False)
async def overview_live(request: Request) -> Template:
    """The overview's numbers alone: what the page swaps in every ten seconds."""
    return page(request, "overview_live.html", **await _numbers(request))


async def _numbers(request: Request) -> dict:
    state = request.app.state
    reader = state.get("console_overview")
    if reader is None:
        reader = state.console_overview = OverviewReader(services(request).db)
    seen = await reader.read()
    svc = services(request)
    return {
        "ov": seen,
        "spark": sparkline(seen),
        "fmt": Formats(seen.at),
        # Published by the dispatchers (core/circuits.py); balances as last asked.
        "circuits": {c.plugin: c for c in await open_circuits(svc.db, seen.at)},
        "balances": svc.balances.read(),
        # A worker silent for longer is taken for dead by the others (core/leases.py).
        "takeover_ms": int(svc.runtime.config.dispatch.takeover_seconds * 1000),
    }


class Formats:
    """Display helpers for the overview's templates, relative to the overview's time."""

    def __init__(self, now: int) -> None:
        self.now = now

    def age(self, then: int | None) -> str:
        """How long ago ``then`` was: 40 秒, 12 分钟, 3 小时 5 分, 2 天 4 小时."""
        if then is None:
            return "-"
        return self.elapsed(self.now - then)

    @staticmethod
    def elapsed(ms: int) -> str:
        """A span of ``ms`` milliseconds, as ``age`` words it."""
        seconds = max(0, ms // 1000)
        if seconds < 60:
            return f"{seconds} 秒"
        minutes = seconds // 60
        if minutes < 60:
            return f"{minutes} 分钟"
        hours, minutes = divmod(minutes, 60)
        if hours < 24:
            return f"{hours} 小时 {minutes} 分"
        days, hours = divmod(hours, 24)
        return f"{days} 天 {hours} 小时"

    @staticmethod
    def duration(ms: int | None) -> str:
        if ms is None:
            return "-"
        return f"{ms} 毫秒" if ms < 1000 else f"{ms / 1000:.1f} 秒"

    @staticmethod
    def rate(share: float | None) -> str:
        return "-" if share is None else f"{share:.1%}"

    @staticmethod
    def order_rate(counts: dict[str, int]) -> str:
        settled = counts.get("succeeded", 0) + counts.get("failed", 0)
        return "-" if not settled else f"{counts.get('succeeded', 0) / settled:.1%}"


class Sparkline:
    def __init__(self, points: str, area: str, dots: list[tuple[float, float, str]], top: int):
        self.points, self.area, self.dots, self.top = points, area, dots, top
        self.width, self.height = SPARK_WIDTH, SPARK_HEIGHT


def sparkline(seen: Overview) -> Sparkline:
    """An inline SVG polyline of orders per minute, scaled to the busiest minute."""
    counts = seen.per_minute
    top = max(counts) or 1
    step = SPARK_WIDTH / max(1, len(counts) - 1)
    usable = SPARK_HEIGHT - 6
    coords = [
        (round(i * step, 1), round(SPARK_HEIGHT - 3 - n / top * usable, 1))
        for i, n in enumerate(counts)
    ]
    points = " ".join(f"{x},{y}" for x, y in coords)
    area = f"0,{SPARK_HEIGHT} {points} {SPARK_WIDTH},{SPARK_HEIGHT}"
    dots = [
        (x, y, f"{_minute(seen.per_minute_from + i * 60_000)} {n} 单")
        for i, ((x, y), n) in enumerate(zip(coords, counts, strict=True))
    ]
    return Sparkline(points, area, dots, max(counts))


def _minute(ms: int) -> str:
    return beijing_time(ms)[11:16]


route_handlers = [overview, overview_live]
