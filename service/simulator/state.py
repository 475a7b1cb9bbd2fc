"""The simulator's memory: transactions, how they settle, and callback delivery."""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from core.clock import BEIJING
from core.numbering import carrier_of
from service.simulator.faults import ActiveFaults, FaultBook
from service.simulator.options import Credentials, SimulatorOptions

log = logging.getLogger("topup.simulator")

# A receiver that neither answers nor refuses must not hold a delivery for long.
CALLBACK_TIMEOUT = httpx.Timeout(5.0)
# How every supplier writes a time, in Beijing time whatever the host's zone.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class SubmitLost(Exception):
    """A submit the simulator pretends never arrived (fault lose_submit)."""


class Status(enum.StrEnum):
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Refused before acceptance: listed for inspection, but unknown to the protocol's queries.
    REFUSED = "refused"


class Outcome(enum.Enum):
    SUCCEED = "succeed"
    FAIL = "fail"
    NEVER_SETTLE = "never_settle"
    REFUSE = "refuse"


def outcome_for(phone_no: str) -> Outcome:
    """Like a supplier's preprod environment, the last digit decides."""
    return {"4": Outcome.FAIL, "5": Outcome.REFUSE, "6": Outcome.NEVER_SETTLE}.get(
        phone_no[-1:], Outcome.SUCCEED
    )


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    DUPLICATE = "duplicate"


class Transaction(msgspec.Struct, kw_only=True):
    protocol: str
    reference: str
    phone_no: str
    amount_fen: int
    # The supplier's own number for the order; each protocol formats it its own way.
    seq: int
    created_at: float
    status: Status = Status.PROCESSING
    submits: int = 1
    paid: int = 0
    settled_at: float | None = None
    operator_id: int | None = None
    # The carrier the submit named, in protocols that name one (acme).
    carrier: str | None = None
    callback_url: str | None = None

    def charged_fen(self, per_mille: int) -> int:
        """What the supplier keeps: the price once delivered; a failed top-up is refunded."""
        return price_fen(self.amount_fen, per_mille) if self.status is Status.SUCCEEDED else 0

    def view(self) -> TransactionView:
        return TransactionView(
            protocol=self.protocol,
            reference=self.reference,
            phone_no=self.phone_no,
            amount_fen=self.amount_fen,
            carrier=self.carrier,
            status=self.status.value,
            submits=self.submits,
            paid=self.paid,
            created_at=iso(self.created_at),
            settled_at=iso(self.settled_at) if self.settled_at is not None else None,
        )


class TransactionView(msgspec.Struct, kw_only=True):
    protocol: str
    reference: str
    phone_no: str
    amount_fen: int
    carrier: str | None
    status: str
    submits: int
    paid: int
    created_at: str
    settled_at: str | None


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def beijing(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, BEIJING)


def beijing_time(timestamp: float) -> str:
    return beijing(timestamp).strftime(TIME_FORMAT)


def price_fen(amount_fen: int, per_mille: int) -> int:
    """``per_mille`` thousandths of a face value, rounded half up to the fen.

    In integers: as a float, 2.985 (3 yuan at 99.5%) is a hair below itself and rounds down.
    """
    return (amount_fen * per_mille + 500) // 1000


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals, the way statements write amounts."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d}"


@dataclass(frozen=True)
class Callback:
    """One notification to deliver; ``sign`` runs per attempt, as a timestamp may be signed."""

    url: str
    sign: Callable[[], tuple[bytes, dict[str, str]]]
    acknowledged: Callable[[httpx.Response], bool]


# protocol -> builder of its callback for a settled transaction (None: nowhere to send it).
CallbackBuilder = Callable[["Simulator", Transaction, bool], Callback | None]


class Simulator:
    def __init__(
        self, options: SimulatorOptions, credentials: Credentials, faults: FaultBook
    ) -> None:
        self.options = options
        self.credentials = credentials
        self.faults = faults
        self.callback_builders: dict[str, CallbackBuilder] = {}
        self._transactions: dict[tuple[str, str], Transaction] = {}
        self._by_seq: dict[tuple[str, int], Transaction] = {}
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        # References whose first submit was lost on purpose (fault lose_submit).
        self._lost: set[tuple[str, str]] = set()
        self._client: httpx.AsyncClient | None = None
        # Numbers moved to another carrier (携号转网), set through /_sim/ported: what a
        # carrier lookup answers for them instead of their segment's carrier.
        self.ported: dict[str, str] = {}

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # -- inspection ---------------------------------------------------------------------------

    def transactions(self, protocol: str | None = None) -> list[Transaction]:
        return [t for t in self._transactions.values() if protocol in (None, t.protocol)]

    def find(self, protocol: str, reference: str) -> Transaction | None:
        """An accepted transaction by our reference (refused ones never existed upstream)."""
        found = self._transactions.get((protocol, reference))
        return found if found is not None and found.status is not Status.REFUSED else None

    def find_by_seq(self, protocol: str, seq: int) -> Transaction | None:
        found = self._by_seq.get((protocol, seq))
        return found if found is not None and found.status is not Status.REFUSED else None

    def carrier_of(self, phone_no: str) -> str | None:
        """The carrier serving ``phone_no`` now: as ported, else its segment's."""
        return self.ported.get(phone_no) or carrier_of(phone_no)

    # -- submits ------------------------------------------------------------------------------

    async def submit(
        self, protocol: str, reference: str, phone_no: str, amount_fen: int, **extra: Any
    ) -> tuple[Verdict, Transaction, ActiveFaults]:
        """Record one submit and start its settlement; the caller shapes the protocol's answer."""
        faults = self.faults.for_phone(phone_no)
        known = self._transactions.get((protocol, reference))
        if "lose_submit" in faults and known is None and (protocol, reference) not in self._lost:
            self._lost.add((protocol, reference))
            log.info("%s %s: submit lost on purpose", protocol, reference)
            await asyncio.sleep(faults.seconds("lose_submit"))
            raise SubmitLost(reference)
        if known is not None and known.status is not Status.REFUSED:
            known.submits += 1
            return Verdict.DUPLICATE, known, faults
        tx = Transaction(
            protocol=protocol,
            reference=reference,
            phone_no=phone_no,
            amount_fen=amount_fen,
            seq=next(self._seq),
            created_at=time.time(),
            submits=known.submits + 1 if known is not None else 1,
            **extra,
        )
        self._transactions[(protocol, reference)] = tx
        self._by_seq[(protocol, tx.seq)] = tx
        outcome = outcome_for(phone_no)
        if outcome is Outcome.REFUSE or "reject" in faults:
            tx.status = Status.REFUSED
            return Verdict.REFUSED, tx, faults
        if "processing_callback" in faults:
            # Spawned before the settlement starts, so it is built while still processing.
            self._spawn(self._notify(tx))
        await self._start_settlement(tx, outcome, early="early_callback" in faults)
        return Verdict.ACCEPTED, tx, faults

    async def _start_settlement(self, tx: Transaction, outcome: Outcome, *, early: bool) -> None:
        if outcome is Outcome.NEVER_SETTLE:
            return
        if early:
            await self._settle(tx, outcome)
        else:
            self._spawn(self._settle_later(tx, outcome))

    async def _settle_later(self, tx: Transaction, outcome: Outcome) -> None:
        await asyncio.sleep(self.options.settle)
        await self._settle(tx, outcome)

    async def _settle(self, tx: Transaction, outcome: Outcome) -> None:
        tx.status = Status.SUCCEEDED if outcome is Outcome.SUCCEED else Status.FAILED
        tx.paid = 1 if outcome is Outcome.SUCCEED else 0
        tx.settled_at = time.time()
        log.info("%s %s settled: %s", tx.protocol, tx.reference, tx.status)
        await self._notify(tx)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- callbacks ----------------------------------------------------------------------------

    async def _notify(self, tx: Transaction) -> None:
        faults = self.faults.for_phone(tx.phone_no)
        if "lose_callback" in faults:
            log.info("%s %s: callback lost on purpose", tx.protocol, tx.reference)
            return
        builder = self.callback_builders.get(tx.protocol)
        callback = builder(self, tx, "bad_signature_callback" in faults) if builder else None
        if callback is None:
            return
        for _ in range(2 if "duplicate_callback" in faults else 1):
            await self._deliver(callback, f"{tx.protocol} {tx.reference}")

    async def _deliver(self, callback: Callback, what: str) -> bool:
        assert self._client is not None, "the simulator was not started"
        tries = max(1, self.options.callback_retries)
        for attempt in range(1, tries + 1):
            body, headers = callback.sign()
            try:
                response = await self._client.post(callback.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.info("%s: callback try %d to %s failed: %r", what, attempt, callback.url, exc)
            else:
                if callback.acknowledged(response):
                    log.info("%s: callback acknowledged (try %d)", what, attempt)
                    return True
                log.info("%s: callback try %d answered %d", what, attempt, response.status_code)
            if attempt < tries:
                await asyncio.sleep(self.options.callback_interval)
        log.warning("%s: callback given up after %d tries", what, tries)
        return False


def is_mobile_number(text: str) -> bool:
    """A mainland China mobile number: 11 digits starting with 1."""
    return len(text) == 11 and text.isdigit() and text.startswith("1")


def is_reference(text: str, shortest: int = 1, longest: int = 32) -> bool:
    return shortest <= len(text) <= longest and text.isascii() and text.isalnum()
