"""Time: stored as Unix milliseconds, shown to partners in Beijing time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def beijing_time(ms: int | None) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time, the format Chinese partners expect."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
