"""What metrics cost per accepted order, counted in instructions (valgrind), not seconds.

On a machine shared with other work, times vary by tens of percent from run to run;
the instructions a process executes hardly do. This drives the application in-process
(its ASGI entry point, no sockets: uvicorn's share is the same with metrics on or off),
with the background worker off, so what is counted is the accept path: the HTTP wrapper,
the partner checks, the group commit and the metrics. Per order is the difference of
two runs of different lengths (so start-up cancels out), with metrics on and off.

    .venv/bin/python bench/metrics_cost.py            # needs valgrind; ~10 minutes

Internally, ``--drive N SECRET`` is one run (what valgrind executes).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from core.signing import SignType, compute_sign  # noqa: E402

WARM_UP = 2000
CONCURRENCY = 64
SHORT, LONG = 200, 2200


async def call(app, path: str, body: bytes) -> bytes:
    sent = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def signed(params: dict[str, str], secret: str) -> bytes:
    params = {"appID": harness.APP, "ts": str(int(time.time())), **params}
    params["sign"] = compute_sign(params, secret, SignType.HMAC_SHA256)
    return urlencode(params).encode()


async def drive(count: int, secret: str) -> None:
    """Accept WARM_UP + count orders, CONCURRENCY at a time."""
    from service.app import create_app

    app = create_app(background=False)
    async with app.lifespan():
        reply = await call(app, "/sign/api/token", signed({}, secret))
        token = json.loads(reply)["data"]["access_token"]
        run = f"{time.time_ns():x}"
        bodies = [
            signed(
                {
                    "access_token": token,
                    "company": harness.COMPANY,
                    "Supplier": harness.CARRIER,
                    "phoneNo": f"1380{i:06d}0",
                    "productId": harness.PRODUCT,
                    "cstmOrderName": "bench",
                    "cstmOrderNo": f"b{run}-{i}",
                },
                secret,
            )
            for i in range(WARM_UP + count)
        ]

        async def worker() -> None:
            while bodies:
                reply = await call(app, "/sign/api/order", bodies.pop())
                assert b'"code":"0"' in reply, reply

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def instructions(count: int, metrics_on: bool) -> int:
    """Instructions valgrind counted for one whole run (start-up included)."""
    with tempfile.TemporaryDirectory(prefix="topup-cost-") as tmp:
        env = harness.topup_env(
            f"sqlite+aiosqlite:///{tmp}/cost.db",
            8000,  # not listened on: the run drives the app in-process
            TOPUP_METRICS="1" if metrics_on else "0",
            PYTHONHASHSEED="0",
        )
        secret = harness.topup("app", "add", harness.APP, "--company", harness.COMPANY, env=env)
        harness.topup("app", "credit", harness.APP, "100000000", "--reason", "bench", env=env)
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                __file__,
                "--drive",
                str(count),
                secret,
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


def main() -> None:
    if sys.argv[1:2] == ["--drive"]:
        import uvloop

        uvloop.run(drive(int(sys.argv[2]), sys.argv[3]))
        return
    per_order = {}
    for on in (True, False):
        short, long = instructions(SHORT, on), instructions(LONG, on)
        per_order[on] = (long - short) / (LONG - SHORT)
        print(f"metrics {'on ' if on else 'off'}: {per_order[on]:,.0f} instructions per order")
    extra = per_order[True] - per_order[False]
    print(f"metrics add {extra:,.0f} instructions per order ({extra / per_order[False]:+.1%})")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
