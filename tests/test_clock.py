"""Times as partners read them: Beijing time, ``yyyy-MM-dd HH:mm:ss``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from core.clock import BEIJING, beijing_time


def expected(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def test_beijing_time_is_utc_plus_eight_across_midnight_and_the_year() -> None:
    midnight_beijing = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)  # 2027-01-01 00:00 +08
    ms = int(midnight_beijing.timestamp() * 1000)
    assert beijing_time(ms - 1) == "2026-12-31 23:59:59"
    assert beijing_time(ms) == "2027-01-01 00:00:00"
    assert beijing_time(ms + 999) == "2027-01-01 00:00:00"
    assert beijing_time(ms + 3_600_000 + 61_000) == "2027-01-01 01:01:01"
    assert beijing_time(0) == "1970-01-01 08:00:00"
    assert beijing_time(None) == ""


def test_beijing_time_agrees_with_datetime_on_many_moments() -> None:
    rng = random.Random(20261128)
    # Leap days and month ends included: 1970 to 2100.
    for ms in (rng.randrange(0, 4_102_444_800_000) for _ in range(20_000)):
        assert beijing_time(ms) == expected(ms), ms
