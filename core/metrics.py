"""Prometheus metrics of the order lifecycle, recorded where things happen.

The service exposes them at ``GET /metrics`` (service/metrics.py); this module only
counts, so that the core stays free of HTTP.

Cost. The accept path records two things per request (its HTTP request, and the order
accepted), the dispatcher two per order (its supplier call, and the outcome). A
prometheus_client update takes a lock and, with several processes, writes a file-backed
map: 2-6 us. So these are tallied in plain dictionaries (~0.4 us) and handed to
prometheus_client by ``flush()``, a second later at most and before every scrape. The
rest (group commits, circuits) happen per batch or rarely and are recorded directly.

Processes. One process (``topup serve`` on SQLite) keeps its metrics in memory. When
more than one process serves (PostgreSQL: the HTTP process and the background process;
``--workers N``), ``topup serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a directory of
its own, each process writes its values to files there, and ``/metrics`` sums them.
prometheus_client chooses between the two when it is first imported, so it is imported
here on first use, not with this module: ``topup serve`` decides after its modules load.

``TOPUP_METRICS=0`` turns recording off (for operators, and for the benchmark's A/B):
every function returns at once and the service has no ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.routing import Router

METRICS_ENV = "TOPUP_METRICS"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A supplier may answer any code it likes: past this many per plugin and call, new
# codes count as "other", so that a misbehaving supplier cannot grow the label set.
MAX_CODES = 50
MAX_CODE_LENGTH = 32
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})

# Seconds. The accept path answers in milliseconds; a supplier in tens of milliseconds
# to its call timeout (20 s by default).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SUPPLIER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# Longest a tallied hot-path increment waits for flush() (a scrape flushes at once).
FLUSH_SECONDS = 1.0


def enabled() -> bool:
    return os.environ.get(METRICS_ENV, "1") != "0"


class _Family:
    """A labelled metric with its children cached: ``labels()`` takes a lock and builds
    a child's key each time, a dictionary lookup here does not."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

        # A *_created series per child doubles the output, for nothing a dashboard uses.
        disable_created_metrics()
        self.http_requests = _Family(
            Counter(
                "topup_http_requests",
                "HTTP requests answered, by route template, method and status.",
                ["route", "method", "status"],
            )
        )
        self.http_duration = _Family(
            Histogram(
                "topup_http_request_duration_seconds",
                "Time from a request reaching the application to its last byte handed on.",
                ["route", "method"],
                buckets=HTTP_BUCKETS,
            )
        )
        self.orders = _Family(
            Counter(
                "topup_orders",
                "Orders reaching a state: accepted (by the plugin its route tries first), "
                "succeeded, failed, review (by the plugin of the attempt that decided it).",
                ["state", "carrier", "plugin"],
            )
        )
        self.supplier_duration = _Family(
            Histogram(
                "topup_supplier_call_duration_seconds",
                "Calls into supplier plugins, by plugin, call and outcome.",
                ["plugin", "call", "outcome"],
                buckets=SUPPLIER_BUCKETS,
            )
        )
        self.supplier_calls = _Family(
            Counter(
                "topup_supplier_calls",
                "Calls into supplier plugins, by plugin, call, outcome and the supplier's code.",
                ["plugin", "call", "outcome", "code"],
            )
        )
        self.circuit_open = _Family(
            Gauge(
                "topup_circuit_open",
                "1 while a plugin's circuit is open (skipped after repeated failures).",
                ["plugin"],
                multiprocess_mode="livemax",
            )
        )
        self.circuit_openings = _Family(
            Counter("topup_circuit_openings", "Times a plugin's circuit opened.", ["plugin"])
        )
        self.commit_batch = Histogram(
            "topup_group_commit_batch_size",
            "Jobs (accepted orders, attempts, results, ...) per group commit.",
            buckets=BATCH_BUCKETS,
        )
        self.commit_duration = Histogram(
            "topup_group_commit_duration_seconds",
            "Time of one group commit's transaction, fsync included.",
            buckets=COMMIT_BUCKETS,
        )
        self.codes: dict[tuple[str, str], set[str]] = {}
        # The hot paths' tallies: (route, method, status) and (plugin, call, outcome,
        # code) -> [count, sum, per-bucket counts...]; (carrier, plugin) -> orders
        # accepted; (state, carrier, plugin) -> orders that reached the state.
        self.http_tally: dict[tuple[str, str, int], list] = {}
        self.supplier_tally: dict[tuple[str, str, str, str], list] = {}
        self.accepted_tally: dict[tuple[str, str], int] = {}
        self.reached_tally: dict[tuple[str, str, str], int] = {}
        self.flush_due = False


_metrics: _Metrics | None = None
_ENABLED = enabled()


def _get() -> _Metrics | None:
    global _metrics
    if _metrics is None and _ENABLED:
        _metrics = _Metrics()
    return _metrics


def activate() -> None:
    """Create the metrics now, so that /metrics lists every family from the start."""
    _get()


# -- recording ----------------------------------------------------------------------------


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    m = _metrics or _get()
    if m is None:
        return
    if method not in HTTP_METHODS:
        method = OTHER  # the client chooses the method: keep the label set bounded
    _observe(m.http_tally, (route, method, status), HTTP_BUCKETS, seconds)
    if not m.flush_due:
        _flush_soon(m)


def _observe(tallies: dict[Any, list], key: Any, buckets: tuple, seconds: float) -> None:
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = [0, 0.0] + [0] * (len(buckets) + 1)
    tally[0] += 1
    tally[1] += seconds
    # The bucket whose upper bound is the first >= seconds, as Histogram.observe picks.
    tally[2 + bisect_left(buckets, seconds)] += 1


def order_accepted(carrier: str, order_no: str, router: Router) -> None:
    m = _metrics or _get()
    if m is None:
        return
    key = (carrier, planned_plugin(router, carrier, order_no))
    m.accepted_tally[key] = m.accepted_tally.get(key, 0) + 1
    if not m.flush_due:
        _flush_soon(m)


def _flush_soon(m: _Metrics) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not in the service's event loop (a command): at once
        flush()
        return
    m.flush_due = True
    loop.call_later(FLUSH_SECONDS, flush)


def flush() -> None:
    """Hand the hot path's tallies to prometheus_client (their files, with several
    processes); /metrics calls it before reading."""
    m = _metrics
    if m is None:
        return
    m.flush_due = False
    http, m.http_tally = m.http_tally, {}
    for (route, method, status), tally in http.items():
        m.http_requests.child(route, method, str(status)).inc(tally[0])
        duration = m.http_duration.child(route, method)
        _add_observations(duration, HTTP_BUCKETS, tally[1], tally[2:])
    calls, m.supplier_tally = m.supplier_tally, {}
    for (plugin, call, outcome, code), tally in calls.items():
        m.supplier_calls.child(plugin, call, outcome, code).inc(tally[0])
        duration = m.supplier_duration.child(plugin, call, outcome)
        _add_observations(duration, SUPPLIER_BUCKETS, tally[1], tally[2:])
    accepted, m.accepted_tally = m.accepted_tally, {}
    for (carrier, plugin), count in accepted.items():
        m.orders.child("accepted", carrier, plugin).inc(count)
    reached, m.reached_tally = m.reached_tally, {}
    for (state, carrier, plugin), count in reached.items():
        m.orders.child(state, carrier, plugin).inc(count)


def _add_observations(child: Any, buckets: tuple, total: float, per_bucket: list[int]) -> None:
    """Add many observations to a histogram child at once: its sum and bucket values,
    prometheus_client's own (non-cumulative) storage, as ``observe`` updates them."""
    try:
        buckets, sum_value = child._buckets, child._sum
    except AttributeError:
        # A prometheus_client that stores them otherwise: the buckets stay right, the
        # sum is approximated by each bucket's bound.
        for bound, count in zip((*buckets, buckets[-1] * 2), per_bucket, strict=True):
            for _ in range(count):
                child.observe(bound)
        return
    sum_value.inc(total)
    for index, count in enumerate(per_bucket):
        if count:
            buckets[index].inc(count)


def order_reached(state: str, carrier: str, plugin: str) -> None:
    """An order entered ``state`` (succeeded, failed or review), decided by ``plugin``."""
    m = _metrics or _get()
    if m is None:
        return
    key = (str(state), carrier, plugin)
    m.reached_tally[key] = m.reached_tally.get(key, 0) + 1
    if not m.flush_due:
        _flush_soon(m)


def planned_plugin(router: Router, carrier: str, order_no: str) -> str:
    """The plugin an order's route tries first, open circuits aside.

    A route of one plugin needs no computing; a longer one is derived from the order
    number (core/routing.py), which costs a few microseconds.
    """
    route = router.route(carrier)
    if len(route) == 1:
        return route[0]
    preference = router.preference(carrier, order_no)
    return preference[0] if preference else "none"


def supplier_call(plugin: str, call: str, outcome: str, code: str, seconds: float) -> None:
    m = _metrics or _get()
    if m is None:
        return
    outcome, code = str(outcome), str(code)  # a plugin's result is not validated
    key = (plugin, call, outcome, _bounded_code(m, plugin, call, code))
    _observe(m.supplier_tally, key, SUPPLIER_BUCKETS, seconds)
    if not m.flush_due:
        _flush_soon(m)


def _bounded_code(m: _Metrics, plugin: str, call: str, code: str) -> str:
    seen = m.codes.setdefault((plugin, call), set())
    if code in seen:
        return code
    if len(seen) >= MAX_CODES or len(code) > MAX_CODE_LENGTH:
        return OTHER
    seen.add(code)
    return code


def circuit(plugin: str, is_open: bool, opened: bool = False) -> None:
    """The circuit state of ``plugin`` now; ``opened``: this call opened it."""
    m = _metrics or _get()
    if m is None:
        return
    m.circuit_open.child(plugin).set(1 if is_open else 0)
    if opened:
        m.circuit_openings.child(plugin).inc()


def group_commit(jobs: int, seconds: float) -> None:
    m = _metrics or _get()
    if m is not None:
        m.commit_batch.observe(jobs)
        m.commit_duration.observe(seconds)


# -- the multiprocess directory -------------------------------------------------------------

_DIR_PREFIX = "topup-metrics-"
_PID = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def new_multiprocess_dir() -> str:
    """A fresh directory for this ``topup serve``'s processes, named after its pid; the
    directories of earlier ones that died without removing theirs are removed."""
    parent = Path(tempfile.gettempdir())
    for stale in parent.glob(f"{_DIR_PREFIX}*-*"):
        pid = stale.name[len(_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-")


def remove_dead_files(path: str) -> None:
    """Clean a directory given by the operator at start: the files of processes that are
    gone (a previous run's) are removed; a running ``topup worker``'s stay."""
    for file in Path(path).glob("*.db"):
        pid = file_pid(file.name)
        if pid is not None and not alive(pid):
            file.unlink(missing_ok=True)


def file_pid(name: str) -> int | None:
    found = _PID.search(name)
    return int(found.group(1)) if found else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_multiprocess_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
