"""Reconciliation end to end: the partner's daily statement, and our attempts against a
supplier's statement fetched from the simulator, with real and planted mismatches."""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.clock import BEIJING
from tests.conftest import new_partner
from tests.support import (
    FAST_DISPATCH,
    TOPUP,
    Backend,
    Partner,
    ServiceProcess,
    fresh_order_no,
)
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

TODAY = datetime.now(BEIJING).strftime("%Y-%m-%d")


def config(simulator: str) -> str:
    fast = FAST_DISPATCH.replace("[dispatch]", "[dispatch]\nmax_queries = 3")
    return f"""
enabled = ["juhe"]
{fast}
[plugin.juhe]
base_url = "{simulator}"
timeout = 1.0

[suppliers."中国移动"]
route = ["juhe"]
products = [
  {{ product_id = "YD10", face_value = "10", price = "9.99", cost = {{ juhe = "9.97" }} }},
]
"""


class Books:
    def __init__(self, service: ServiceProcess, simulator: str, partner: Partner) -> None:
        self.service, self.simulator, self.partner = service, simulator, partner
        self.orders: dict[str, str] = {}  # phone's last digit + n -> orderNo

    def place(self, label: str, phone: str) -> str:
        cstm = fresh_order_no(label)
        reply = self.partner.order(cstm, phone=phone)
        assert reply["code"] == "0", reply
        self.orders[label] = reply["data"]["orderNo"]
        return cstm

    def reference(self, label: str) -> str:
        return self.orders[label] + "A1"

    def statement(self, target: Path, edit=None) -> Path:
        text = httpx.get(
            f"{self.simulator}/_sim/statement", params={"protocol": "juhe", "date": TODAY}
        ).text
        rows = list(csv.DictReader(io.StringIO(text)))
        if edit:
            rows = edit(rows)
        with target.open("w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(
                out, fieldnames=list(csv.DictReader(io.StringIO(text)).fieldnames)
            )
            writer.writeheader()
            writer.writerows(rows)
        return target

    def reconcile(self, statement: Path):
        return self.service.cli(
            "reconcile",
            "supplier",
            "--plugin",
            "juhe",
            "--file",
            str(statement),
            "--date",
            TODAY,
            check=False,
        )


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Books]:
    workdir = tmp_path_factory.mktemp(f"reconcile-{backend.name}")
    with running_simulator("--settle", "0.2", env=CREDENTIALS) as simulator:
        service = ServiceProcess(workdir, config(simulator), env=CREDENTIALS, backend=backend)
        service.start()
        try:
            partner = new_partner(service)
            books = Books(service, simulator, partner)
            placed = [
                books.place("ok1", "13900000011"),
                books.place("ok2", "13900000021"),
                books.place("ok3", "13900000031"),
                books.place("failed", "13900000044"),
                books.place("refused", "13900000055"),
            ]
            for cstm in placed:
                partner.wait_status(cstm, {"2", "3"})
            yield books
        finally:
            service.stop()
            service.drop_database()


def test_a_clean_day_reconciles(books: Books, tmp_path: Path) -> None:
    result = books.reconcile(books.statement(tmp_path / "juhe.csv"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no mismatches" in result.stdout
    assert "charged 29.91, expected 29.91" in result.stdout  # three successes at 9.97


def test_planted_mismatches_are_each_reported(books: Books, tmp_path: Path) -> None:
    def plant(rows: list[dict]) -> list[dict]:
        by_ref = {row["orderid"]: row for row in rows}
        del by_ref[books.reference("ok1")]
        by_ref[books.reference("ok2")]["ordercash"] = "9.99"
        by_ref[books.reference("failed")] |= {"game_state": "1", "ordercash": "9.97"}
        bogus = dict(next(iter(by_ref.values())), orderid="TP20000101000000000999999990A1")
        return [*by_ref.values(), bogus]

    result = books.reconcile(books.statement(tmp_path / "planted.csv", plant))
    assert result.returncode == 1
    report = result.stdout
    assert f"MISSING_AT_SUPPLIER  {books.reference('ok1')}" in report
    assert f"AMOUNT_MISMATCH      {books.reference('ok2')}" in report
    assert f"STATUS_MISMATCH      {books.reference('failed')}" in report
    assert "MISSING_HERE         TP20000101000000000999999990A1" in report
    assert books.reference("ok3") not in report and books.reference("refused") not in report
    assert "4 mismatches" in report


def test_an_order_settled_by_hand_against_the_supplier_is_caught(
    books: Books, tmp_path: Path
) -> None:
    books.place("stuck", "13900000066")  # the supplier never settles it
    order_no = books.orders["stuck"]
    books.service.wait_for_state(order_no, "review")
    books.service.cli("orders", "review", order_no, "--resolve", "failed", "--reason", "guess")
    result = books.reconcile(books.statement(tmp_path / "stuck.csv"))
    assert result.returncode == 1
    assert f"OPEN_AT_SUPPLIER     {books.reference('stuck')}" in result.stdout


def test_an_unreadable_statement_is_refused(books: Books, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = books.reconcile(bad)
    assert result.returncode != 0 and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_partner_statement_with_bom_total_and_margin(books: Books, tmp_path: Path) -> None:
    target = tmp_path / "statement.csv"
    books.service.cli(
        "reconcile",
        "export",
        "--date",
        TODAY,
        "--app",
        books.partner.app_id,
        "--with-cost",
        "--output",
        str(target),
    )
    raw = target.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "a spreadsheet needs the BOM to see UTF-8"
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    header, lines, total = rows[0], rows[1:-1], rows[-1]
    assert header[:11] == [
        "orderNo",
        "cstmOrderNo",
        "orderId",
        "phoneNo",
        "productId",
        "faceValue",
        "price",
        "status",
        "statusDesc",
        "createTime",
        "finishTime",
    ] and header[11:] == ["plugin", "cost", "margin"]
    by_order = {line[0]: line for line in lines}
    ok = by_order[books.orders["ok1"]]
    assert (ok[7], ok[11], ok[12], ok[13]) == ("2", "juhe", "9.97", "0.02")
    assert by_order[books.orders["failed"]][7] == "3"
    succeeded = [line for line in lines if line[7] == "2"]
    assert total[0] == "合计" and total[1] == f"{len(lines)} 笔"
    assert total[6] == f"{9.99 * len(succeeded):.2f}"  # only successes are charged
    assert total[13] == f"{0.02 * len(succeeded):.2f}"


def test_partner_statement_without_costs_by_default(books: Books) -> None:
    out = books.service.cli(
        "reconcile", "export", "--date", TODAY, "--app", books.partner.app_id
    ).stdout
    assert "cost" not in out.splitlines()[0]
    assert "2000-01-01" not in out
    empty = books.service.cli("reconcile", "export", "--date", "2000-01-01").stdout
    assert len(empty.strip().splitlines()) == 2  # header and a zero total


def test_partner_text_that_a_spreadsheet_would_run_is_neutralised(books: Books) -> None:
    partner = new_partner(books.service)
    formulas = [
        '=HYPERLINK("http://evil.example/x","click")',
        "+1+1",
        "-2+3",
        "@SUM(1+1)",
    ]
    for cstm in formulas:
        assert partner.order(cstm, phone="13900000155")["code"] == "0"  # refused upstream
    # To stdout, as `topup reconcile export ... > day.csv` would be saved.
    raw = subprocess.run(
        [TOPUP, "reconcile", "export", "--date", TODAY, "--app", partner.app_id],
        env=books.service.env,
        capture_output=True,
        check=True,
    ).stdout
    assert raw.startswith(b"\xef\xbb\xbf"), "a spreadsheet needs the BOM to see UTF-8"
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    cells = sorted(line[1] for line in rows[1:-1])
    assert cells == sorted("'" + cstm for cstm in formulas)
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), row
    # The stored value is the partner's own, as the status query shows it.
    assert partner.status(formulas[0])["data"]["cstmOrderNo"] == formulas[0]
