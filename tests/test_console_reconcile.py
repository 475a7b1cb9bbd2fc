"""对账 through a real `topup serve`: an operator uploads a supplier's statement and sees the
differences `topup reconcile supplier` finds; the upload is audited; viewers only read."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Console, csrf_of
from tests.test_reconcile import TODAY, Books

# The reconciliation tests' service, with a day of orders through the simulator's juhe.
from tests.test_reconcile import books as books

PAGE = "/console/reconcile"
_names = itertools.count(1)


@pytest.fixture
def console(books: Books) -> Iterator[tuple[Console, str]]:
    name = f"recon{next(_names)}"
    books.service.add_operator(name, "operator")
    console = Console(books.service)
    assert console.sign_in(name).status_code == 303
    yield console, name
    console.close()


def upload(console: Console, path: Path, plugin: str = "juhe", day: str = TODAY):
    token = csrf_of(console.get(PAGE).text)
    with path.open("rb") as statement:
        return console.http.post(
            PAGE,
            data={"csrf_token": token, "plugin": plugin, "day": day},
            files={"statement": (path.name, statement, "text/csv")},
        )


def test_a_clean_statement_shows_no_differences_and_is_audited(
    books: Books,
    console,
    tmp_path: Path,
) -> None:
    client, name = console
    statement = books.statement(tmp_path / "juhe-clean.csv")
    reply = upload(client, statement)
    assert reply.status_code == 200, reply.text
    assert "无差异" in reply.text and "juhe-clean.csv" in reply.text
    assert "29.91 元" in reply.text  # three successes at 9.97, on both sides
    [(target, detail)] = books.service.sql(
        "SELECT target, detail FROM audit_log WHERE action = 'reconcile.upload' AND actor = ?",
        name,
    )
    assert target == "juhe"
    recorded = json.loads(detail)
    assert (recorded["filename"], recorded["day"], recorded["mismatches"]) == (
        "juhe-clean.csv",
        TODAY,
        0,
    )


def test_planted_differences_are_each_listed(
    books: Books,
    console,
    tmp_path: Path,
) -> None:
    def plant(rows: list[dict]) -> list[dict]:
        by_ref = {row["orderid"]: row for row in rows}
        del by_ref[books.reference("ok1")]
        by_ref[books.reference("ok2")]["ordercash"] = "9.99"
        return list(by_ref.values())

    reply = upload(console[0], books.statement(tmp_path / "planted.csv", plant))
    assert reply.status_code == 200
    page = reply.text
    assert 'class="mismatch-count">2 笔' in page
    assert 'data-kind="MISSING_AT_SUPPLIER">' in page and "供应商无记录" in page
    assert 'data-kind="AMOUNT_MISMATCH">' in page and "金额不一致" in page
    assert books.reference("ok1") in page and books.reference("ok2") in page
    assert books.reference("ok3") not in page


def test_an_unreadable_file_or_a_bad_day_is_shown_on_the_page(
    console,
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    unreadable = upload(console[0], bad)
    assert unreadable.status_code == 400
    assert "无法读取对账单 bad.csv" in unreadable.text and "no column" in unreadable.text
    wrong_day = upload(console[0], bad, day="2026-13-40")
    assert wrong_day.status_code == 400 and "日期" in wrong_day.text
    no_plugin = upload(console[0], bad, plugin="nosuch")
    assert no_plugin.status_code == 400 and "未启用" in no_plugin.text


def test_a_viewer_sees_the_page_but_cannot_upload(
    books: Books,
    tmp_path: Path,
) -> None:
    books.service.add_operator("recon-viewer", "viewer")
    viewer = Console(books.service)
    try:
        viewer.sign_in("recon-viewer")
        page = viewer.get(PAGE)
        assert page.status_code == 200 and "需要操作员或管理员权限" in page.text
        statement = books.statement(tmp_path / "v.csv")
        token = csrf_of(viewer.get("/console").text)
        refused = viewer.http.post(
            PAGE,
            data={"csrf_token": token, "plugin": "juhe", "day": TODAY},
            files={"statement": ("v.csv", statement.read_bytes(), "text/csv")},
        )
        assert refused.status_code == 403
        assert books.service.sql("SELECT count(*) FROM audit_log WHERE actor = 'recon-viewer'") == [
            (0,)
        ]
    finally:
        viewer.close()
