"""The cost of metrics on the accept path: order acceptance with metrics on and off.

Each round runs make bench's acceptance phase (wrk, closed loop, distinct signed orders,
a fresh database) twice, once with ``TOPUP_METRICS=1`` and once with ``TOPUP_METRICS=0``,
alternating which goes first (ABBA...), so that a machine whose speed drifts (other
work on its cores) weighs on both alike. Each run gives orders per second and the CPU
time the service's processes spent per accepted order (from /proc: on a machine shared
with other work, throughput follows the CPU share the service happened to get, while
CPU per order follows what the code costs). Prints every run, then each side's median
and the median of the per-round ratios.

    .venv/bin/python bench/metrics_ab.py [--postgres] [--rounds 6] [--seconds 10]

On SQLite ``topup serve`` is one process (metrics in memory); on PostgreSQL it is the
HTTP process plus the background process, sharing metrics through files
(PROMETHEUS_MULTIPROC_DIR), the dearer path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

# A database of its own on the machine's PostgreSQL (make bench's is `test`).
PG_DATABASE = "topup_metrics_ab"
PG_URL = harness.PG_URL.rsplit("/", 1)[0] + "/" + PG_DATABASE


def psql(database: str, sql: str, check: bool = True) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-q", "-c", sql],
        check=check,
        capture_output=True,
    )


def reset_postgres() -> None:
    psql("postgres", f'CREATE DATABASE "{PG_DATABASE}"', check=False)  # fails if it exists
    psql(PG_DATABASE, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")


def accept(
    database_url: str, seconds: float, metrics_on: bool, postgres: bool
) -> tuple[float, float]:
    """Accepted orders per second over one wrk run, and CPU microseconds per order."""
    os.environ["TOPUP_METRICS"] = "1" if metrics_on else "0"
    if postgres:
        reset_postgres()
        harness.topup("db", "upgrade", env=harness.topup_env(database_url, 8000))
    with harness.service(database_url) as (server, secret):
        bodies = harness.order_bodies(
            server.url, secret, int(seconds * harness.DISTINCT_PER_SECOND)
        )
        pids = server.pids()
        before = harness.cpu_seconds(pids)
        ok = harness.closed_loop(server.url, seconds, bodies).ok
        used = harness.cpu_seconds(pids) - before
        if metrics_on:  # the metrics were really on, and counted every order
            scraped = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert 'topup_orders_total{carrier="中国移动",plugin="sandbox",state="accepted"}' in (
                scraped
            ), scraped[:2000]
    return ok / seconds, used / ok * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="topup-ab-") as tmp:
        for round_no in range(args.rounds):
            order = (True, False) if round_no % 2 == 0 else (False, True)
            for on in order:
                url = (
                    PG_URL
                    if args.postgres
                    else f"sqlite+aiosqlite:///{tmp}/ab-{round_no}-{int(on)}.db"
                )
                rate, cpu = accept(url, args.seconds, on, args.postgres)
                runs[on].append((rate, cpu))
                label = "on " if on else "off"
                print(
                    f"round {round_no + 1} metrics {label}: {rate:,.0f} orders/s, "
                    f"{cpu:,.0f} µs CPU per order",
                    flush=True,
                )
    for index, name in ((0, "orders/s"), (1, "µs CPU per order")):
        on = [run[index] for run in runs[True]]
        off = [run[index] for run in runs[False]]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        print(f"{name}:")
        for side, values in (("on: ", on), ("off:", off)):
            listed = ", ".join(f"{v:,.0f}" for v in values)
            print(f"  {side} {listed} (median {statistics.median(values):,.0f})")
        print(
            f"  on/off per round: {', '.join(f'{r:.3f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
