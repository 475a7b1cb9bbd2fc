"""Order numbers: unique and time-ordered across processes, readable by operators.

``TP`` + Beijing time to the millisecond (17 digits) + a 4-digit node number + a
4-digit sequence within the millisecond. Each serving process takes its node number
from a counter in the shared database (``take_node_number``), so no two running
processes share one; within a process the numbers only ever grow, even if the wall
clock steps back.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
from datetime import UTC, datetime
from functools import lru_cache

from core.clock import BEIJING, now_ms

_SEQUENCE_LIMIT = 10_000
NODE_COUNTER = "order_number_node"


class OrderNumbers:
    def __init__(self, node: int | None = None) -> None:
        self.node = secrets.randbelow(10_000) if node is None else node % 10_000
        self._last_ms = 0
        self._sequence = 0
        self._lock = threading.Lock()
        self._second = -1
        self._second_text = ""

    def next(self) -> str:
        with self._lock:
            ms = max(now_ms(), self._last_ms)
            if ms == self._last_ms:
                self._sequence += 1
                if self._sequence >= _SEQUENCE_LIMIT:
                    ms, self._sequence = ms + 1, 0
            else:
                self._sequence = 0
            self._last_ms = ms
            sequence = self._sequence
        return f"TP{self._stamp(ms // 1000)}{ms % 1000:03d}{self.node:04d}{sequence:04d}"

    def _stamp(self, second: int) -> str:
        # Formatting a date costs more than the rest of the number: once a second will do.
        if second != self._second:
            stamp = datetime.fromtimestamp(second, UTC).astimezone(BEIJING)
            self._second, self._second_text = second, f"{stamp:%Y%m%d%H%M%S}"
        return self._second_text


def taken_at(order_no: str) -> int:
    """The Unix millisecond at which ``order_no`` was taken: the order's acceptance time.

    Stored as the order's ``created_at``, so that the day in an order number is always
    the day of the partner statement that lists it, even for an order taken just before
    midnight and committed just after.
    """
    return _unix_second(order_no[2:16]) * 1000 + int(order_no[16:19])


def order_no_floor(ms: int) -> str:
    """The lowest order number taken at Unix millisecond ``ms`` (a prefix of them all):
    every number taken at or after ``ms`` sorts at or above it, every earlier one below,
    so a time range is an order_no range."""
    stamp = datetime.fromtimestamp(ms // 1000, UTC).astimezone(BEIJING)
    return f"TP{stamp:%Y%m%d%H%M%S}{ms % 1000:03d}"


@lru_cache(maxsize=64)
def _unix_second(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).timestamp())


_ids = random.SystemRandom(), random.Random()


def new_order_id(order_no: str) -> str:
    """The seed's orderId shape, ``Y`` and 29 hex digits, unique because ``order_no`` is.

    The first 21 hex digits are the order number's 25 digits (below 16**21), so two
    orders never share an orderId and no unique index has to prove it: such an index on
    a random value puts every accepted order on its own page of the index, written to
    the log at every commit (bench/LOG.md, 2026-11-29 "orderId"). The last 8 are random,
    so that two installations' orders with the same number do not share one either. An
    identifier, not a secret (every call is signed): a fast generator, seeded from the
    OS and reseeded in each process, is enough.
    """
    return f"Y{int(order_no[2:]):021x}{_ids[1].getrandbits(32):08x}"


def reseed_ids() -> None:
    _ids[1].seed(_ids[0].getrandbits(128))


def attempt_reference(order_no: str, attempt: int) -> str:
    """Letters and digits only, at most 32 characters: fits every supplier's reference field."""
    return f"{order_no}A{attempt}"


# A forked worker must not repeat its parent's sequence of ids.
reseed_ids()
os.register_at_fork(after_in_child=reseed_ids)
