"""On SQLite, the background worker inside the serving process or in a process of its own.

``topup serve`` runs the dispatcher inside the HTTP process on SQLite and in a second
process on PostgreSQL (service/cli.py). This measures why, at fixed offered rates: each
round offers the same rate open loop (bench/loadgen.c, distinct signed orders, a fresh
database each) for a while to

- *inline*: ``topup serve``, as ``make run`` starts it;
- *split*: ``topup serve --no-background`` beside ``topup worker`` on the same file,

alternating which goes first, and prints for each: orders accepted a second, the share
of those completed within the window, the orders left open at its end, the acceptance
p50 and p99, and the cores each process used (from /proc).

    .venv/bin/python bench/split_worker.py [--rates 2000,2500,3000] [--seconds 20] [--rounds 1]

Needs ``make bench/.build/loadgen``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

MODES = ("inline", "split")


@dataclass
class Round:
    mode: str
    rate: float
    accepted: int
    completed: int
    left: int
    seconds: float
    p50: float | None
    p99: float | None
    cores: list[float]  # per process: the HTTP process first, then the worker's

    def row(self) -> str:
        p50 = f"{self.p50:.0f}" if self.p50 is not None else "-"
        p99 = f"{self.p99:.0f}" if self.p99 is not None else "-"
        share = self.completed / self.accepted if self.accepted else 0.0
        cores = " + ".join(f"{c:.2f}" for c in self.cores)
        return (
            f"| {self.mode} | {self.rate:,.0f} | {self.accepted / self.seconds:,.0f} "
            f"| {share:.0%} | {self.left:,} | {p50} | {p99} | {cores} |"
        )


@contextlib.contextmanager
def worker_process(database_url: str, log: Path) -> Iterator[subprocess.Popen]:
    """``topup worker`` on the database, stopped (SIGTERM) on leaving."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(harness.BIN / "topup"), "worker"],
            env=harness.topup_env(database_url, None),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(20)


def one_round(mode: str, rate: float, seconds: float) -> Round:
    with tempfile.TemporaryDirectory(prefix="split-worker-") as tmp:
        path = Path(tmp) / "orders.db"
        url = f"sqlite+aiosqlite:///{path}"
        serve_args = ("--no-background",) if mode == "split" else ()
        with contextlib.ExitStack() as stack:
            server, secret = stack.enter_context(harness.service(url, serve_args=serve_args))
            pids = server.pids()
            if mode == "split":
                pids.append(stack.enter_context(worker_process(url, Path(tmp) / "worker.log")).pid)
            return offer_round(mode, rate, seconds, server, secret, pids, path)


def offer_round(
    mode: str,
    rate: float,
    seconds: float,
    server: harness.Server,
    secret: str,
    pids: list[int],
    path: Path,
) -> Round:
    """Offer ``rate`` orders/s open loop for ``seconds`` to a running ``server`` (whose
    processes are ``pids``, writing the SQLite file ``path``) and measure the round."""
    bodies = harness.order_bodies(server.url, secret, int(rate * seconds) + 100)
    requests = harness.write_http_requests(f"127.0.0.1:{server.port}", bodies)
    before = [harness.cpu_seconds([pid]) for pid in pids]
    started = time.time()
    figures = harness.loadgen(server.port, rate, seconds, requests)
    ended = time.time()
    after = [harness.cpu_seconds([pid]) for pid in pids]
    accepted, completed = harness.window_counts(path, started, ended)
    left = harness.orders_in(path, harness.OPEN_STATES)
    window = ended - started
    return Round(
        mode,
        rate,
        accepted,
        completed,
        left,
        window,
        figures.get("p50"),
        figures.get("p99"),
        [(b - a) / window for a, b in zip(before, after, strict=True)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,2500,3000", help="orders/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if not harness.LOADGEN.exists():
        raise SystemExit("no load generator: run `make bench/.build/loadgen` first")
    print("| worker | offered/s | accepted/s | completed | left open | p50 ms | p99 ms | cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate in (float(r) for r in args.rates.split(",")):
        for n in range(args.rounds):
            order = MODES if n % 2 == 0 else MODES[::-1]
            for mode in order:
                print(one_round(mode, rate, args.seconds).row(), flush=True)


if __name__ == "__main__":
    main()
