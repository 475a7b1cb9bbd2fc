"""Time: stored as Unix milliseconds, shown to partners in Beijing time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta, timezone
from functools import lru_cache

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
_BEIJING_OFFSET_S = 8 * 3600


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


_source: Callable[[], int] = _system_ms


def now_ms() -> int:
    """Unix milliseconds: the system clock, or a test's (``use_clock``)."""
    return _source()


@contextmanager
def use_clock(source: Callable[[], int]) -> Iterator[None]:
    """Within the block, every ``now_ms()`` of this process reads ``source``: an in-process
    test moves time forward instead of sleeping (lease ends, query delays, resend ages)."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = _system_ms() if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def beijing_time(ms: int | None) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time, the format Chinese partners expect."""
    if ms is None:
        return ""
    # A status query formats three of these: the date once a day, the time of day from
    # two tables, at a third of strftime's cost (an aware datetime costs three times that).
    day, second = divmod(ms // 1000 + _BEIJING_OFFSET_S, 86400)
    return _date_of(day) + _HOURS_MINUTES[second // 60] + _SECONDS[second % 60]


_HOURS_MINUTES = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SECONDS = tuple(f"{s:02d}" for s in range(60))


@lru_cache(maxsize=1024)
def _date_of(day: int) -> str:
    """``yyyy-MM-dd `` of ``day`` days after 1970-01-01, in the already-shifted zone."""
    return time.strftime("%Y-%m-%d ", time.gmtime(day * 86400))
