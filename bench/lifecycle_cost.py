"""What the background worker costs per order, against what accepting it costs.

One process drives the application in-process (its ASGI entry, no sockets, as
bench/metrics_cost.py does) with the background worker off, and accepts N orders: that
segment is the accept path (HTTP wrapper, partner checks, group commit). Then it starts
the dispatcher its ``Services`` built (service/wiring.py: the same object ``topup
serve`` runs inline on SQLite, sharing the one writer) over those orders, and that
segment runs until every order is terminal: claim and attempt, the sandbox's submit,
apply with the capture of the money and the notification outbox row (the app has a
notify URL; the notifier, which would deliver it over HTTP, is not started).

Each segment is measured as CPU time of the process (``--measure cpu``, all threads,
a few seconds) or as instructions counted by valgrind (``--measure instructions``,
the figure that does not move with the machine's load; several minutes). Per order is
the difference between runs of two sizes, so start-up and the dispatcher's first scans
cancel out. The process being measured does not look at the database while it works:
this script, in its own process, watches the file read-only and tells it when every
order is terminal.

    .venv/bin/python bench/lifecycle_cost.py                    # CPU time, ~20 s
    .venv/bin/python bench/lifecycle_cost.py --measure instructions
    .venv/bin/python bench/lifecycle_cost.py --via-query        # pending, then a query

``--via-query``: the sandbox answers "processing" to the submit (``settle_seconds``)
and tells the outcome to the first status query (``query_delays = [0.01]``), the path
of most real suppliers; by default it answers at once, as the shipped plugins.toml (and
so ``make run`` and ``make bench``) has it.

Internally, ``--drive N SECRET`` is one run (what valgrind executes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.metrics_cost import call, signed  # noqa: E402

CONCURRENCY = 64
# Orders per run: (short, long) per measure; per order is their difference's share.
SIZES = {"cpu": (500, 2500), "instructions": (100, 600)}
REPEATS = {"cpu": 3, "instructions": 1}
# Where the final notification would go: recorded in the outbox, never delivered here.
NOTIFY_URL = "http://127.0.0.1:9/topup-notify"
POLL_SECONDS = 0.05
TERMINAL = ("succeeded", "failed")
# `valgrind --dump-before=ctermid` starts a new count at each segment boundary: the
# process calls ctermid(3) there and nowhere else.
BOUNDARY = "ctermid"


# -- the measured process ---------------------------------------------------------------------


def boundary() -> float:
    os.ctermid()
    return time.process_time()


async def drive(count: int, secret: str) -> None:
    """Accept ``count`` orders, then dispatch them; prints each segment's CPU seconds."""
    from service.app import create_app

    app = create_app(background=False, settle=True)
    async with app.lifespan():
        bodies = await order_bodies(app, secret, count)
        loop = asyncio.get_running_loop()
        all_terminal = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), all_terminal.set)

        started = boundary()
        await accept(app, bodies)
        accepted = boundary()
        print("dispatching", flush=True)  # the watcher starts looking at the database
        dispatcher = app.state.services.dispatcher
        dispatcher.start()
        await all_terminal.wait()
        dispatched = boundary()
        await dispatcher.stop()
    print(json.dumps({"accept": accepted - started, "dispatch": dispatched - accepted}))


async def order_bodies(app, secret: str, count: int) -> list[bytes]:
    reply = await call(app, "/sign/api/token", signed({}, secret))
    token = json.loads(reply)["data"]["access_token"]
    run = f"{time.time_ns():x}"
    return [
        signed(
            {
                "access_token": token,
                "company": harness.COMPANY,
                "Supplier": harness.CARRIER,
                # Never ending in 4 or 7: every order succeeds at its first attempt.
                "phoneNo": f"1380{i:06d}0",
                "productId": harness.PRODUCT,
                "cstmOrderName": "bench",
                "cstmOrderNo": f"c{run}-{i}",
            },
            secret,
        )
        for i in range(count)
    ]


async def accept(app, bodies: list[bytes]) -> None:
    pending = list(bodies)

    async def client() -> None:
        while pending:
            reply = await call(app, "/sign/api/order", pending.pop())
            assert b'"code":"0"' in reply, reply

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


# -- the watcher ------------------------------------------------------------------------------


@dataclass
class Run:
    orders: int
    accept: float  # CPU seconds or instructions of the accept segment
    dispatch: float


def config(via_query: bool, directory: Path) -> Path:
    """The bench's plugins.toml; ``via_query``: the sandbox answers pending, then a query
    made 10 ms later tells the outcome."""
    text = harness.bench_config().read_text(encoding="utf-8")
    if via_query:
        text, delays = re.subn(r"(?m)^query_delays = .*$", "query_delays = [0.01]", text)
        text, sandbox = re.subn(
            r"(?m)^\[plugin\.sandbox\]$", "[plugin.sandbox]\nsettle_seconds = 0.001", text
        )
        if (delays, sandbox) != (1, 1):
            raise SystemExit("plugins.toml: no query_delays or [plugin.sandbox] line to change")
    path = directory / "plugins.toml"
    path.write_text(text, encoding="utf-8")
    return path


def one_run(count: int, measure: str, via_query: bool) -> Run:
    with tempfile.TemporaryDirectory(prefix="topup-lifecycle-") as tmp:
        database = Path(tmp) / "cost.db"
        env = harness.topup_env(
            f"sqlite+aiosqlite:///{database}",
            8000,  # not listened on: the run drives the app in-process
            TOPUP_CONFIG=str(config(via_query, Path(tmp))),
            PYTHONHASHSEED="0",
        )
        secret = harness.topup("app", "add", harness.APP, "--company", harness.COMPANY, env=env)
        harness.topup("app", "credit", harness.APP, "100000000", "--reason", "bench", env=env)
        harness.topup(
            "app", "set", harness.APP, "--notify-url", NOTIFY_URL, "--allow-private", env=env
        )
        command = [sys.executable, __file__, "--drive", str(count), secret]
        if measure == "instructions":
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/callgrind.out",
                f"--dump-before={BOUNDARY}",
                *command,
            ]
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if proc.stdout.readline().strip() != "dispatching":
                raise SystemExit(f"the measured run failed:\n{proc.communicate()[1][-3000:]}")
            wait_until_terminal(database, count, proc)
            proc.stdin.write("done\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0:
            raise SystemExit(f"the measured run failed:\n{err[-3000:]}")
        check_outcome(database, count)
        if measure == "instructions":
            # Dumps: .1 start-up, .2 accept, .3 dispatch (callgrind numbers them).
            accept, dispatch = (instructions(Path(f"{tmp}/callgrind.out.{n}")) for n in (2, 3))
            return Run(count, accept, dispatch)
        segments = json.loads(out.strip().splitlines()[-1])
        return Run(count, segments["accept"], segments["dispatch"])


def wait_until_terminal(database: Path, count: int, proc: subprocess.Popen) -> None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
        while True:
            stored, open_ = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state NOT IN (?, ?)) FROM orders",
                TERMINAL,
            ).fetchone()
            if stored == count and open_ == 0:
                return
            if proc.poll() is not None:
                raise SystemExit(f"the measured run stopped:\n{proc.communicate()[1][-3000:]}")
            time.sleep(POLL_SECONDS)


def check_outcome(database: Path, count: int) -> None:
    """Every order succeeded, at its first attempt, with its notification queued."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        succeeded = conn.execute("SELECT count(*) FROM orders WHERE state = 'succeeded'")
        attempts = conn.execute("SELECT count(*) FROM attempts")
        queued = conn.execute("SELECT count(*) FROM notifications")
        found = (succeeded.fetchone()[0], attempts.fetchone()[0], queued.fetchone()[0])
    if found != (count, count, count):
        raise SystemExit(
            f"expected {count} succeeded orders, attempts and notifications, found {found}"
        )


def instructions(dump: Path) -> int:
    match = re.search(r"(?m)^totals: (\d+)", dump.read_text(errors="replace"))
    if match is None:
        raise SystemExit(f"{dump}: no totals line")
    return int(match.group(1))


@dataclass
class Cost:
    unit: str  # "µs" or "instructions"
    accept: float  # per order, the median of the repeats
    dispatch: float
    repeats: list[tuple[float, float]]  # (accept, dispatch) per order, each repeat

    @property
    def ratio(self) -> float:
        return self.dispatch / self.accept


def measure_cost(measure: str = "cpu", via_query: bool = False) -> Cost:
    short, long = SIZES[measure]
    accept, dispatch = [], []
    for _ in range(REPEATS[measure]):
        a, b = one_run(short, measure, via_query), one_run(long, measure, via_query)
        accept.append((b.accept - a.accept) / (long - short))
        dispatch.append((b.dispatch - a.dispatch) / (long - short))
    scale = 1e6 if measure == "cpu" else 1.0
    return Cost(
        "µs" if measure == "cpu" else "instructions",
        statistics.median(accept) * scale,
        statistics.median(dispatch) * scale,
        [(a * scale, d * scale) for a, d in zip(accept, dispatch, strict=True)],
    )


def main() -> None:
    if sys.argv[1:2] == ["--drive"]:
        import uvloop

        uvloop.run(drive(int(sys.argv[2]), sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=("cpu", "instructions"), default="cpu")
    parser.add_argument("--via-query", action="store_true")
    args = parser.parse_args()
    cost = measure_cost(args.measure, args.via_query)
    print(f"accept:   {cost.accept:,.0f} {cost.unit} per order")
    print(f"dispatch: {cost.dispatch:,.0f} {cost.unit} per order")
    print(f"dispatch / accept: {cost.ratio:.0%}")
    for accept, dispatch in cost.repeats if len(cost.repeats) > 1 else ():
        print(f"  one repeat: accept {accept:,.0f}, dispatch {dispatch:,.0f}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
