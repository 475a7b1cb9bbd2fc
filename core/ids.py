"""Order numbers: unique and time-ordered across processes, readable by operators.

``TP`` + Beijing time to the millisecond (17 digits) + a 4-digit node number picked
per process + a 4-digit sequence within the millisecond. Within one process the
numbers only ever grow, even if the wall clock steps back.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from datetime import UTC, datetime

from core.clock import BEIJING, now_ms

_SEQUENCE_LIMIT = 10_000


class OrderNumbers:
    def __init__(self, node: int | None = None) -> None:
        self.node = secrets.randbelow(10_000) if node is None else node % 10_000
        self._last_ms = 0
        self._sequence = 0
        self._lock = threading.Lock()

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
        stamp = datetime.fromtimestamp(ms / 1000, UTC).astimezone(BEIJING)
        return f"TP{stamp:%Y%m%d%H%M%S}{ms % 1000:03d}{self.node:04d}{sequence:04d}"


def new_order_id() -> str:
    """The seed's orderId shape: ``Y`` and 29 hex digits."""
    return "Y" + uuid.uuid4().hex[:29]


def attempt_reference(order_no: str, attempt: int) -> str:
    """Letters and digits only, at most 32 characters: fits every supplier's reference field."""
    return f"{order_no}A{attempt}"
