"""The README is part of the contract: its walk-through and its Python example run, its
tables match the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from core.errors import ERROR_DOCS, ErrorCode
from tests.support import REPO, ServiceProcess, sandbox_config

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(name: str) -> str:
    match = re.search(rf"<!-- {name}:.*?-->\n(.*?)<!-- /{name} -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make run")
    assert first_block.splitlines()[1].startswith("make test")


def test_walkthrough_runs_against_a_fresh_service(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, sandbox_config()).start()
    try:
        script = section("walkthrough").split("```sh\n", 1)[1].rsplit("```", 1)[0]
        script = script.replace("BASE=http://127.0.0.1:8000", f"BASE={service.url}")
        env = {**service.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            # Generous: beside the rest of the suite on two cores, each `topup` command
            # in the script can take seconds to start.
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        replies = [line for line in result.stdout.splitlines() if line.startswith("{")]
        order, status = (json.loads(line) for line in replies)
        assert order["code"] == "0" and order["data"]["status"] == "0", order
        assert status["code"] == "0", status
        assert status["data"]["orderNo"] == order["data"]["orderNo"]
        assert status["data"]["status"] == "2"
    finally:
        service.stop()


def test_error_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `(\w+)` \| ([\d /]+) \| (.+) \|$", section("errors"), re.M)
    documented = {code: text for code, _status, text in rows}
    assert set(documented) == {str(code) for code in ErrorCode}
    for code, text in ERROR_DOCS.items():
        assert documented[str(code)] == text, code
    assert set(ERROR_DOCS) == set(ErrorCode)


def test_the_python_client_example_orders_in_under_ten_lines(tmp_path: Path) -> None:
    block = section("client-example")
    client_page = (REPO / "docs" / "client.md").read_text(encoding="utf-8")
    assert block in client_page, "docs/client.md shows another example than the README"
    script = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert len([line for line in script.splitlines() if line.strip()]) < 10
    service = ServiceProcess(tmp_path, sandbox_config()).start()
    try:
        # The walk-through's app, made as the walk-through makes it.
        walkthrough = [
            ["app", "add", "demo", "--company", "彩生活"],
            ["app", "credit", "demo", "100", "--reason", "预付款 demo"],
        ]
        secret = service.cli_many(walkthrough).splitlines()[0]
        result = subprocess.run(
            [sys.executable, "-c", script.replace("http://127.0.0.1:8000", service.url)],
            cwd=tmp_path,
            env={**os.environ, "TOPUP_SECRET": secret},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        order_no, state, description = result.stdout.split()
        assert order_no.startswith("TP") and (state, description) == ("SUCCEEDED", "充值成功")
        [(placed,)] = service.sql("SELECT cstm_order_no FROM orders WHERE order_no = ?", order_no)
        assert placed == "demo-0002"
    finally:
        service.stop()
