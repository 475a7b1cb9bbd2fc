"""On SQLite: one serving process, or a front process for HTTP beside the one writer.

Prices a design before anyone builds it (as ``bench/sql_floor.py --write-set smallest``
does for a schema): a *front* process serves the partner API (HTTP, authentication,
checks, reads of the database file) and hands each validated order to a *writer*
process, which alone writes the SQLite file: acceptance's group commit, and the
dispatcher and the notifier beside it, as ``topup serve`` runs them inline today. The
front waits for the writer's answer (the order committed) before it answers the partner,
so an acknowledged order is on disk as before.

Nothing here is the product: the front is ``topup``'s app with ``Lifecycle.accept``
replaced by a call over a Unix socket (length-prefixed msgpack frames, written once per
turn of the event loop), and the writer is the background process's ``Services`` with
the socket's orders put on its group writer's queue. Each round offers the same rate
open loop (bench/loadgen.c, distinct signed orders, a fresh database each) to

- *inline*: ``topup serve``, as ``make run`` starts it;
- *front*: the front and the writer described above,

and prints, as bench/split_worker.py does: orders accepted a second, the share of those
completed within the window, the orders left open at its end, the acceptance p50 and
p99, and the cores each process used.

    .venv/bin/python bench/front_writer.py [--rates 2500,4000,5500] [--seconds 20]
        [--rounds 1] [--modes inline,front] [--trace FILE]

``--trace FILE``: the process that writes (inline: the server, started then by this
script as ``topup serve`` starts it; front: the writer) logs each second to FILE its
group commits: how many, the jobs in each by batch, and how long the statements on the
event loop and the COMMIT took. That is how the dispatcher was seen claiming in every
other transaction only (core/writer.py now lets a caller queue before the next batch).

Internally, ``--writer SOCKET``, ``--front`` and ``--inline-traced`` run the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.split_worker import Round, offer_round  # noqa: E402
from core.errors import ErrorCode, TopupError  # noqa: E402
from core.orders import NewOrder, OrderRecord  # noqa: E402

MODES = ("inline", "front")
SOCKET_ENV = "TOPUP_BENCH_WRITER_SOCKET"
# Where the writer logs its group commits each second (--trace).
TRACE_ENV = "TOPUP_BENCH_WRITER_TRACE"
LENGTH = struct.Struct("!I")

Request = tuple[int, NewOrder]
# (id, the order, created, error code, error message): an order, or an error.
Reply = tuple[int, OrderRecord | None, bool, str | None, str | None]


class Frames:
    """Length-prefixed frames in, whole frames out; written once per turn of the loop."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._out: list[bytes] = []
        self._buffer = bytearray()

    def send(self, payload: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(LENGTH.pack(len(payload)))
        self._out.append(payload)

    def _flush(self) -> None:
        self._writer.write(b"".join(self._out))
        self._out.clear()

    def received(self, data: bytes) -> Iterator[bytes]:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            (size,) = LENGTH.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            yield bytes(buffer[start + 4 : start + 4 + size])
            start += 4 + size
        del buffer[:start]


# -- the writer process ----------------------------------------------------------------------


async def run_writer(path: str) -> None:
    if os.environ.get(TRACE_ENV):
        CommitTrace(os.environ[TRACE_ENV]).install()
    from core.lifecycle.accept import ACCEPT
    from core.writer import _Queued
    from service.settings import Settings
    from service.wiring import Services

    services = Services(Settings.from_env(), api=False, background=True)
    await services.start()
    writer = services.db.writer
    decode = msgspec.msgpack.Decoder(Request).decode
    encode = msgspec.msgpack.Encoder().encode

    async def serve(reader: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
        frames = Frames(stream)

        def answer(request_id: int) -> Callable[[asyncio.Future], None]:
            def done(future: asyncio.Future) -> None:
                result = future.result()
                if isinstance(result, TopupError):
                    frames.send(encode((request_id, None, False, result.code, result.message)))
                elif isinstance(result, BaseException):
                    frames.send(encode((request_id, None, False, "", str(result))))
                else:
                    record, created = result
                    frames.send(encode((request_id, record, created, None, None)))
                    if created:
                        services.dispatcher.wake()

            return done

        loop = asyncio.get_running_loop()
        while data := await reader.read(1 << 16):
            for frame in frames.received(data):
                request_id, new = decode(frame)
                future = loop.create_future()
                future.add_done_callback(answer(request_id))
                writer._queue.append(_Queued(ACCEPT, new, future))
            writer._pending.set()
            if writer._task is None:
                writer.start()

    server = await asyncio.start_unix_server(serve, path)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await services.stop()


class CommitTrace:
    """Logs each second the group commits of this process (to ``path``): how many, their mean
    size (jobs, by batch), their mean duration, and of that the statements on the event
    loop, the wait for the COMMIT and the COMMIT itself on its helper thread."""

    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1)  # noqa: SIM115 (as long as the process)
        self._reset()

    def _reset(self) -> None:
        self.since = time.perf_counter()
        self.commits = 0
        self.jobs: dict[str, int] = {}
        self.total = self.statements = self.waited = self.committing = 0.0
        self.longest = self.longest_statements = self.gc_pause = 0.0

    def install(self) -> None:
        from core.writer import GroupWriter, LoopTransactions

        trace = self
        commit, execute = GroupWriter._commit, GroupWriter._execute
        in_thread = LoopTransactions._in_thread

        async def traced_commit(writer, batch):
            started = time.perf_counter()
            await commit(writer, batch)
            trace.ended(batch, time.perf_counter() - started)

        def traced_execute(writer, conn, batch):
            started = time.perf_counter()
            try:
                return execute(writer, conn, batch)
            finally:
                took = time.perf_counter() - started
                trace.statements += took
                trace.longest_statements = max(trace.longest_statements, took)

        async def traced_in_thread(transactions, fn, *args):
            def timed(*args):
                started = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    took = time.perf_counter() - started
                    trace.committing += took
                    trace.longest = max(trace.longest, took)

            started = time.perf_counter()
            try:
                return await in_thread(transactions, timed, *args)
            finally:
                trace.waited += time.perf_counter() - started

        collecting = [0.0]

        def collected(phase: str, info: dict) -> None:
            if phase == "start":
                collecting[0] = time.perf_counter()
            elif info["generation"] == 2:
                trace.gc_pause = max(trace.gc_pause, time.perf_counter() - collecting[0])

        gc.callbacks.append(collected)
        GroupWriter._commit = traced_commit
        GroupWriter._execute = traced_execute
        LoopTransactions._in_thread = traced_in_thread

    def ended(self, batch: list, seconds: float) -> None:
        self.commits += 1
        self.total += seconds
        for queued in batch:
            name = queued.batch.name if queued.batch is not None else "job"
            self.jobs[name] = self.jobs.get(name, 0) + 1
        if time.perf_counter() - self.since >= 1:
            n = self.commits
            jobs = ", ".join(f"{name} {count / n:.1f}" for name, count in sorted(self.jobs.items()))
            print(
                f"{n} commits/s of {jobs}: {self.total / n * 1000:.1f} ms each, statements "
                f"{self.statements / n * 1000:.1f}, COMMIT {self.waited / n * 1000:.1f} "
                f"({self.committing / n * 1000:.1f} on its thread, longest "
                f"{self.longest * 1000:.1f}); longest statements "
                f"{self.longest_statements * 1000:.1f}, full collection {self.gc_pause * 1000:.1f}",
                file=self._out,
            )
            self._reset()


# -- the front process -----------------------------------------------------------------------


class RemoteAccept:
    """``Lifecycle.accept`` as a call to the writer process."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._frames: Frames | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._next = 0
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Reply).decode
        self._connecting: asyncio.Lock | None = None

    async def accept(self, new: NewOrder) -> tuple[OrderRecord, bool]:
        if self._frames is None:
            await self._connect()
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        self._frames.send(self._encode((self._next, new)))
        _, record, created, code, message = await future
        if record is None:
            raise TopupError(ErrorCode(code), message) if code else RuntimeError(message)
        return record, created

    async def _connect(self) -> None:
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:
            if self._frames is None:
                reader, writer = await asyncio.open_unix_connection(self._path)
                frames = Frames(writer)
                asyncio.get_running_loop().create_task(self._read(reader, frames))
                self._frames = frames

    async def _read(self, reader: asyncio.StreamReader, frames: Frames) -> None:
        while data := await reader.read(1 << 16):
            for frame in frames.received(data):
                reply = self._decode(frame)
                self._waiting.pop(reply[0]).set_result(reply)


def front_app():
    """The served app (service/app.py), its accepts sent to the writer process."""
    from core.lifecycle import Lifecycle
    from service.app import served_app

    remote = RemoteAccept(os.environ[SOCKET_ENV])

    async def accept(_lifecycle: Lifecycle, new: NewOrder) -> tuple[OrderRecord, bool]:
        return await remote.accept(new)

    Lifecycle.accept = accept  # type: ignore[method-assign]
    return served_app()


def traced_app():
    """The served app as ``topup serve`` runs it on SQLite (the worker inline), its group
    commits traced (--trace)."""
    from service.app import served_app

    CommitTrace(os.environ[TRACE_ENV]).install()
    return served_app()


def run_front(app: str) -> None:
    import uvicorn

    uvicorn.run(
        app,
        factory=True,
        host="127.0.0.1",
        port=int(os.environ["TOPUP_PORT"]),
        loop="uvloop",
        http="service.http_protocol:RequestDeadlineProtocol",
        ws="none",
        proxy_headers=False,
        access_log=False,
        log_level="warning",
    )


# -- the rounds ------------------------------------------------------------------------------


@contextlib.contextmanager
def front_and_writer(url: str, tmp: Path) -> Iterator[tuple[harness.Server, str, list[int]]]:
    port = harness.free_port()
    socket = str(tmp / "writer.sock")
    env = harness.topup_env(url, port, **{SOCKET_ENV: socket, "TOPUP_BACKGROUND": "0"})
    secret = harness.topup("app", "add", harness.APP, "--company", harness.COMPANY, env=env)
    harness.topup("app", "credit", harness.APP, "100000000", "--reason", "bench", env=env)
    script = str(Path(__file__).resolve())
    writer_log = tmp / "writer.log"
    with writer_log.open("w") as log:
        writer = subprocess.Popen(
            [sys.executable, script, "--writer", socket],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket):
            if writer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(writer_log.read_text())
            time.sleep(0.05)
        front = harness.Server([sys.executable, script, "--front"], env, port, "/healthz")
        try:
            yield front, secret, [front.proc.pid, writer.pid]
        finally:
            front.stop()
    finally:
        writer.terminate()
        writer.wait(20)


@contextlib.contextmanager
def inline_traced(url: str, tmp: Path) -> Iterator[tuple[harness.Server, str]]:
    """As harness.service, the server's group commits traced to the --trace file."""
    port = harness.free_port()
    env = harness.topup_env(url, port, TOPUP_BACKGROUND="1")
    secret = harness.topup("app", "add", harness.APP, "--company", harness.COMPANY, env=env)
    harness.topup("app", "credit", harness.APP, "100000000", "--reason", "bench", env=env)
    script = str(Path(__file__).resolve())
    server = harness.Server([sys.executable, script, "--inline-traced"], env, port, "/healthz")
    try:
        yield server, secret
    finally:
        server.stop()


def one_round(mode: str, rate: float, seconds: float) -> Round:
    with tempfile.TemporaryDirectory(prefix="front-writer-") as tmp:
        path = Path(tmp) / "orders.db"
        url = f"sqlite+aiosqlite:///{path}"
        with contextlib.ExitStack() as stack:
            if mode == "inline" and os.environ.get(TRACE_ENV):
                server, secret = stack.enter_context(inline_traced(url, Path(tmp)))
                pids = server.pids()
            elif mode == "inline":
                server, secret = stack.enter_context(harness.service(url))
                pids = server.pids()
            else:
                server, secret, pids = stack.enter_context(front_and_writer(url, Path(tmp)))
            return offer_round(mode, rate, seconds, server, secret, pids, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2500,4000,5000", help="orders/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help="inline, front or both")
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="the writer logs here, each second, its group commits: how many, their mean "
        "size and duration, and of that the statements and the wait for the COMMIT",
    )
    parser.add_argument("--writer", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--front", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inline-traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        import uvloop

        uvloop.run(run_writer(args.writer))
        return
    if args.front or args.inline_traced:
        run_front("bench.front_writer:" + ("front_app" if args.front else "traced_app"))
        return
    if args.trace:
        os.environ[TRACE_ENV] = str(Path(args.trace).resolve())
    if not harness.LOADGEN.exists():
        raise SystemExit("no load generator: run `make bench/.build/loadgen` first")
    print("| mode | offered/s | accepted/s | completed | left open | p50 ms | p99 ms | cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate in (float(r) for r in args.rates.split(",")):
        for n in range(args.rounds):
            modes = args.modes.split(",")
            order = modes if n % 2 == 0 else modes[::-1]
            for mode in order:
                print(one_round(mode, rate, args.seconds).row(), flush=True)


if __name__ == "__main__":
    main()
