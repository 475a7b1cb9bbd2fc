"""Partner money through the HTTP API and the CLI: holds, captures, releases, refusals,
and the ledger identity under random and concurrent histories. No rule here needs a real
process: the app, with its dispatcher, is served in the test's own process
(tests/inprocess.py); that acknowledged orders survive kill -9 is test_lifecycle's."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from tests.conftest import TOKEN_SECRET, new_partner
from tests.inprocess import InProcessService
from tests.support import Backend, Partner, Service, eventually, fresh_order_no, sandbox_config


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[InProcessService]:
    """The app with its dispatcher running: orders settle and money moves."""
    app = InProcessService(
        tmp_path_factory.mktemp(f"money-{backend.name}"),
        sandbox_config(),
        env={"TOPUP_TOKEN_SECRET": TOKEN_SECRET},
        backend=backend,
        background=True,
    )
    app.start()
    yield app
    app.stop()
    app.drop_database()


def balance(partner: Partner) -> dict[str, Decimal]:
    reply = partner.http.get("/sign/api/balance", params=partner.signed(partner.base())).json()
    assert reply["code"] == "0", reply
    return {name: Decimal(value) for name, value in reply["data"].items()}


def ledger_of(service: Service, app_id: str) -> dict[str, int]:
    rows = service.sql(
        "SELECT kind, sum(amount) FROM ledger WHERE app_id = ? GROUP BY kind", app_id
    )
    return {"credit": 0, "hold": 0, "capture": 0, "release": 0} | dict(rows)


def assert_books_balance(service: Service, partner: Partner) -> None:
    """The account is exactly the sum of its ledger, each event booked once, and the
    partner sees that account. Orders may be settling meanwhile, so each comparison is
    made within one snapshot (one statement), or repeated until nothing moved."""
    [row] = service.sql(
        "SELECT a.credited, a.captured, a.held,"
        " coalesce(sum(CASE WHEN l.kind = 'credit' THEN l.amount ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN l.kind = 'hold' THEN l.amount ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN l.kind = 'capture' THEN l.amount ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN l.kind = 'release' THEN l.amount ELSE 0 END), 0),"
        " count(l.id), count(DISTINCT l.event_key)"
        " FROM accounts a LEFT JOIN ledger l ON l.app_id = a.app_id WHERE a.app_id = ?"
        " GROUP BY a.credited, a.captured, a.held",
        partner.app_id,
    )
    credited, captured, held, credits, holds, captures, releases, entries, events = row
    assert (credited, captured, held) == (credits, captures, holds - captures - releases)
    assert entries == events, "an event was booked twice"
    # Every order holds once; a final order is settled once, an open one not yet.
    [(orders, holds, settled, finals)] = service.sql(
        "SELECT count(*), "
        " sum(CASE WHEN EXISTS (SELECT 1 FROM ledger l WHERE l.event_key = 'hold:' || o.order_no)"
        "     THEN 1 ELSE 0 END), "
        " sum(CASE WHEN EXISTS (SELECT 1 FROM ledger l"
        "     WHERE l.event_key = 'settle:' || o.order_no) THEN 1 ELSE 0 END), "
        " sum(CASE WHEN o.state IN ('succeeded', 'failed') THEN 1 ELSE 0 END) "
        "FROM orders o WHERE o.app_id = ?",
        partner.app_id,
    )
    assert (holds or 0) == orders and (settled or 0) == (finals or 0)

    def still() -> tuple[tuple, dict[str, Decimal]] | None:
        before, seen, after = account(service, partner), balance(partner), account(service, partner)
        return (before, seen) if before == after else None

    # The dispatcher may move money between the two reads; compare a quiet moment.
    (credited, captured, held, limit), seen = eventually(
        still, 5, what="the account standing still long enough to compare"
    )
    assert seen["held"] * 100 == held
    assert seen["balance"] * 100 == credited - captured - held
    assert seen["creditLimit"] * 100 == limit
    assert seen["available"] == seen["balance"] + seen["creditLimit"]


def account(service: Service, partner: Partner) -> tuple:
    [row] = service.sql(
        "SELECT credited, captured, held, credit_limit FROM accounts WHERE app_id = ?",
        partner.app_id,
    )
    return row


def test_an_order_beyond_the_balance_is_refused_and_leaves_nothing(service: Service) -> None:
    broke = new_partner(service, funds=None)
    reply = broke.order(fresh_order_no())
    assert reply["code"] == "1" and reply["errorCode"] == "INSUFFICIENT_BALANCE", reply
    assert "9.95" in reply["message"]
    assert service.sql("SELECT count(*) FROM orders WHERE app_id = ?", broke.app_id) == [(0,)]
    assert service.sql("SELECT count(*) FROM ledger WHERE app_id = ?", broke.app_id) == [(0,)]


def test_hold_then_capture_on_success(service: Service) -> None:
    partner = new_partner(service, funds="20")
    cstm = fresh_order_no()
    assert partner.order(cstm, phone="13800138000")["code"] == "0"
    assert partner.wait_status(cstm, {"2"})["data"]["fundStatus"] == "captured"
    after = balance(partner)
    assert (after["balance"], after["held"], after["available"]) == (
        Decimal("10.05"),
        Decimal("0.00"),
        Decimal("10.05"),
    )
    assert_books_balance(service, partner)


def test_hold_then_release_on_failure(service: Service) -> None:
    partner = new_partner(service, funds="9.95")
    first = fresh_order_no()
    assert partner.order(first, phone="13800138004")["code"] == "0"  # fails upstream
    data = partner.wait_status(first, {"3"})["data"]
    assert data["fundStatus"] == "released"
    assert balance(partner)["balance"] == Decimal("9.95")  # the money came back
    second = fresh_order_no()
    assert partner.order(second)["code"] == "0"  # and can be spent again
    assert_books_balance(service, partner)


def test_money_is_held_while_the_order_is_open(in_process_services) -> None:
    # A sandbox that takes a minute to settle: the order stays 充值中 throughout.
    slow = in_process_services(sandbox_config(extra="settle_seconds = 60"), background=True)
    partner = new_partner(slow, funds="15")
    cstm = fresh_order_no()
    assert partner.order(cstm)["code"] == "0"
    data = partner.wait_status(cstm, {"1"})["data"]
    assert data["fundStatus"] == "held"
    seen = balance(partner)
    assert (seen["held"], seen["balance"]) == (Decimal("9.95"), Decimal("5.05"))
    refused = partner.order(fresh_order_no())  # 5.05 left < 9.95
    assert refused["errorCode"] == "INSUFFICIENT_BALANCE"
    assert_books_balance(slow, partner)


def test_a_repeated_order_holds_nothing_more(service: Service) -> None:
    partner = new_partner(service, funds="9.95")
    cstm = fresh_order_no()
    first = partner.order(cstm)
    assert first["code"] == "0"
    assert partner.order(cstm)["data"] == first["data"]  # no second hold, so no refusal either
    assert ledger_of(service, partner.app_id)["hold"] == 995
    assert_books_balance(service, partner)


def test_credit_limit_lets_the_balance_go_below_zero(service: Service) -> None:
    partner = new_partner(service, funds=None)
    service.cli("app", "set", partner.app_id, "--credit-limit", "10")
    assert partner.order(fresh_order_no())["code"] == "0"
    assert partner.order(fresh_order_no())["errorCode"] == "INSUFFICIENT_BALANCE"
    seen = balance(partner)
    assert seen["creditLimit"] == Decimal("10.00")
    assert seen["balance"] == Decimal("-9.95") and seen["available"] == Decimal("0.05")


def test_operator_views_and_refusals(service: Service) -> None:
    partner = new_partner(service, funds="30")
    cstm = fresh_order_no()
    partner.order(cstm)
    partner.wait_status(cstm, {"2"})
    shown = service.cli("app", "show", partner.app_id).stdout
    assert "balance:      20.05" in shown and "ledger:       consistent" in shown
    assert "credit" in shown and "capture" in shown and "test funds" in shown
    for bad in (
        ["app", "credit", partner.app_id, "-5", "--reason", "x"],
        ["app", "credit", partner.app_id, "1.001", "--reason", "x"],
        ["app", "credit", partner.app_id, "5"],
        ["app", "credit", "nobody", "5", "--reason", "x"],
    ):
        result = service.cli(*bad, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr, bad


def test_random_histories_keep_the_books_balanced(service: Service) -> None:
    """Random credits, orders (succeeding, failing, timing out), duplicates and concurrent
    bursts; after every step the account equals its ledger and no event is booked twice."""
    rng = random.Random(20261126)
    partner = new_partner(service, funds="30")
    token = partner.token()
    placed: list[str] = []

    def order(cstm: str, phone: str) -> dict:
        params = partner.signed(partner.order_params(cstm, phone=phone, access_token=token))
        with service.http_client(timeout=30) as http:  # a client of its own, as before
            return http.post("/sign/api/order", data=params).json()

    for _step in range(25):
        action = rng.choice(["order", "order", "duplicate", "burst", "credit"])
        phone = f"1380013800{rng.choice('0047')}"
        if action == "credit":
            service.cli("app", "credit", partner.app_id, str(rng.randint(1, 30)), "--reason", "r")
        elif action == "duplicate" and placed:
            again = rng.choice(placed)
            assert order(again, phone)["code"] in ("0", "1")
        elif action == "burst":
            cstms = [fresh_order_no() for _ in range(rng.randint(2, 8))]
            batch = cstms + rng.sample(cstms, k=len(cstms) // 2)  # with concurrent duplicates
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                replies = list(pool.map(order, batch, [phone] * len(batch)))
            placed += [c for c, r in zip(batch, replies, strict=True) if r["code"] == "0"]
            assert {r.get("errorCode") for r in replies} <= {None, "INSUFFICIENT_BALANCE"}
        else:
            cstm = fresh_order_no()
            reply = order(cstm, phone)
            assert reply["code"] == "0" or reply["errorCode"] == "INSUFFICIENT_BALANCE", reply
            if reply["code"] == "0":
                placed.append(cstm)
        assert_books_balance(service, partner)

    still_open = (
        "SELECT count(*) FROM orders WHERE app_id = ? AND state NOT IN ('succeeded', 'failed')"
    )
    eventually(
        lambda: service.sql(still_open, partner.app_id) == [(0,)],
        20,
        interval=0.2,
        what="every order final",
    )
    assert_books_balance(service, partner)
    final = balance(partner)
    assert final["held"] == 0
    [(captured,)] = service.sql(
        "SELECT coalesce(sum(price), 0) FROM orders WHERE app_id = ? AND state = 'succeeded'",
        partner.app_id,
    )
    assert ledger_of(service, partner.app_id)["capture"] == captured
    assert "ledger:       consistent" in service.cli("app", "show", partner.app_id).stdout


@pytest.mark.parametrize("seed", range(6))
async def test_random_concurrent_histories_in_the_core(database_url: str, seed: int) -> None:
    """The same identity driven hard in-process: many concurrent holds, duplicates and
    settlements against one SQLite database."""
    import asyncio

    from core.apps import AppStore
    from core.db import Database
    from core.ids import OrderNumbers, new_order_id
    from core.ledger import Ledger
    from core.lifecycle import Lifecycle, Send
    from core.migrate import ensure_schema
    from core.orders import NewOrder
    from core.suppliers import SupplierResult
    from tests.order_rows import Plan

    rng = random.Random(seed)
    db = Database(database_url)
    await ensure_schema(db)
    await AppStore(db).add("app", "co")
    ledger, lifecycle, numbers = Ledger(db), Lifecycle(db), OrderNumbers()
    references: list[str] = []

    async def place(cstm: str) -> None:
        order_no = numbers.next()
        new = NewOrder(
            order_no,
            new_order_id(order_no),
            "app",
            cstm,
            "n",
            "co",
            "中国移动",
            "13800138000",
            "YD10",
            1000,
            rng.choice([995, 1990, 4975]),
        )
        try:
            await lifecycle.accept(new)
        except Exception as exc:  # only a refusal for lack of funds is acceptable
            assert getattr(exc, "code", None) == "INSUFFICIENT_BALANCE", exc

    async def settle_some() -> None:
        for step in await lifecycle.claim("w", 60_000, rng.randint(1, 5), Plan("sandbox")):
            if isinstance(step, Send):
                references.append(step.upstream.reference)
        outcome = rng.choice(
            [SupplierResult.succeeded(), SupplierResult.failed(code="9", message="x")]
        )
        chosen = rng.sample(references, k=min(len(references), rng.randint(0, 4)))
        await asyncio.gather(
            *(
                lifecycle.apply(
                    ref,
                    outcome,
                    from_submit=False,
                    next_query_delay_ms=1000,
                    counts_as_query=True,
                )
                for ref in chosen + chosen  # every result delivered twice, concurrently
            )
        )

    try:
        for _ in range(30):
            step = rng.random()
            if step < 0.2:
                await ledger.credit("app", rng.randint(500, 5000), "r", "t")
            elif step < 0.7:
                names = [f"c{rng.randint(0, 60)}" for _ in range(rng.randint(1, 6))]
                await asyncio.gather(*(place(name) for name in names))
            else:
                await settle_some()
            assert await ledger.verify("app")
            account = await ledger.account("app")
            assert account.available >= 0 and account.held >= 0
    finally:
        await db.dispose()
