"""The multi-process engine: the runner splits the schedule over worker processes, each record
arrives exactly once, the schedule is the single-process one, stop/abort reach every worker, and
a worker that dies is an error that keeps what was measured. Real workers, real simulator, real
sockets on 127.0.0.1."""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import os
import pickle
import re
import select
import signal
import socket
import termios
import threading
from collections.abc import Callable
from time import monotonic_ns

import aiohttp
import orjson
import pytest
from kit.hostile import FlakyWorkload
from kit.load import Collect, chat_endpoint

from latbench import ErrorKind
from latbench.client.looplag import add_lag_listener
from latbench.load.eager import install as install_eager_writes
from latbench.load.runner import Runner, worker_count
from latbench.load.wire import frame, message, pack_record, unpack_record
from latbench.load.worker import Shard, serve, split
from latbench.records import Record
from latbench.records.record import counts, instants
from latbench.sim import SimProcess
from latbench.spec import LoadSpec
from latbench.summary.samples import derived_window, last_instant
from latbench.workload import SyntheticWorkload


def runner(url: str, load: LoadSpec, workers: int, sink: Collect) -> Runner:
    return Runner(
        run_id="engine-test",
        endpoint=chat_endpoint(url),
        workload=SyntheticWorkload(4, 8, seed=3),
        load=load,
        sinks=[sink],
        seed=3,
        workers=workers,
    )


def test_a_record_crosses_the_wire_unchanged() -> None:
    rec = Record(
        run_id="r",
        seq=7,
        phase="measure",
        api="chat",
        t_intended=1_000,
        t_sent=2_000,
        t_headers=2_500,
        t_end=9_000,
        ev_t=(3_000, 4_000, 5_500),
        ev_kind="rcc",
        ev_n=(1, 2, 1),
        status=200,
        finish_reason="length",
        usage_prompt_tokens=4,
        usage_completion_tokens=4,
        max_tokens=4,
        error=ErrorKind.STREAM_TRUNCATED,
        error_detail="cut",
    )
    wire = orjson.dumps(pack_record(rec))
    # The runner keeps the event instants and counts as typed arrays: the same numbers.
    compact = dataclasses.replace(rec, ev_t=instants(rec.ev_t), ev_n=counts(rec.ev_n))
    assert unpack_record("r", orjson.loads(wire)) == compact
    # Instants travel relative to the send, so a record is much shorter than its JSONL line.
    assert b"3000" not in wire and b"1000" in wire


def test_users_and_slots_split_evenly_and_no_worker_is_idle() -> None:
    assert [split(10, 4, k) for k in range(4)] == [3, 3, 2, 2]
    assert sum(split(257, 3, k) for k in range(3)) == 257
    assert worker_count(LoadSpec(concurrency=2, requests=4), 8) == 2
    assert worker_count(LoadSpec(mode="constant", rate=5, requests=4), 3) == 3
    # The default: one per 64 streams, leaving a core for the runner and the rest.
    defaults = [
        worker_count(LoadSpec(concurrency=c, requests=9), None, cores=16) for c in (16, 65, 256)
    ]
    assert defaults == [1, 2, 4]
    assert worker_count(LoadSpec(concurrency=4096, requests=9), None, cores=2) == 1


async def test_closed_loop_over_two_workers_sends_every_request_once(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.005, itl=0.001)
    sink = Collect()
    r = runner(s.url, LoadSpec(concurrency=4, requests=24, warmup_requests=4), 2, sink)
    out = await r.run(session)
    assert out.ended == "completed"
    assert sorted(x.seq for x in out.records) == list(range(24))
    assert sink.records == out.records  # the sink saw each record as it arrived
    assert all(x.ok and len(x.ev_t) == 8 for x in out.records), out.records[0].error_detail
    # Warm-up is by request number, whichever worker sent it.
    assert {x.seq for x in out.records if x.phase == "warmup"} == {0, 1, 2, 3}
    assert out.client.cpu_s > 0 and out.client.wall_s > 0
    assert r.inflight == 0
    # The footer's window is the records' own, as a summary of a file without it derives it.
    assert (out.footer.window_start, out.footer.window_end) == derived_window(out.records, r.load)


async def test_open_loop_shards_keep_the_single_process_schedule(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    sink = Collect()
    load = LoadSpec(mode="constant", rate=50, requests=40)
    out = await runner(s.url, load, 3, sink).run(session)
    recs = sorted(out.records, key=lambda x: x.seq)
    assert [x.seq for x in recs] == list(range(40))
    # Three shards, one schedule: request n is intended exactly n / 50 s after the start.
    gaps = {b.t_intended - a.t_intended for a, b in itertools.pairwise(recs)}
    assert gaps == {20_000_000}
    # Every worker reads the same clock and sends on it: the typical send is on time. The median
    # (not each send) is held to 5 ms, a quarter of a gap: a busy shared 2-core machine can
    # deschedule a worker for longer now and then, and that is what validity reports, not this.
    delays = sorted(x.t_sent - x.t_intended for x in recs)
    assert delays[len(delays) // 2] < 5_000_000, delays


async def test_the_parents_lag_listeners_hear_every_workers_samples(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.01, itl=0.002)
    heard: list[int] = []
    detach = add_lag_listener(asyncio.get_running_loop(), heard.append)
    try:
        out = await runner(s.url, LoadSpec(concurrency=2, duration=1.0), 2, Collect()).run(session)
    finally:
        detach()
    # Two workers tick 100 times a second each for about a second.
    assert len(heard) >= 100, len(heard)
    assert out.client.loop_lag_ns  # the window's samples are in the footer's stats


async def test_stop_lets_streams_finish_and_abort_cancels_them(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.01, itl=0.02)  # 8 events: about 0.15 s per request

    async def run_then(action: str) -> list[Record]:
        r = runner(s.url, LoadSpec(concurrency=4, duration=30.0), 2, Collect())
        task = asyncio.create_task(r.run(session))
        deadline = monotonic_ns() + 10_000_000_000
        while r.inflight < 4 and monotonic_ns() < deadline:
            await asyncio.sleep(0.01)
        assert r.inflight == 4
        getattr(r, action)()
        out = await asyncio.wait_for(task, 10)
        assert out.ended == ("aborted" if action == "abort" else "stopped")
        return out.records

    stopped = await run_then("stop")
    assert stopped and all(x.ok for x in stopped)
    aborted = await run_then("abort")
    cancelled = [x for x in aborted if x.error is ErrorKind.CANCELLED]
    assert len(cancelled) == 4  # the four in flight, each with what it had measured
    assert all(x.t_headers is not None for x in cancelled)


async def test_a_stopped_run_is_measured_up_to_its_stop(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    # After a stop no request is sent and the streams drain: a rate over the drain would not be
    # the load's, so the window ends at the stop, not at the last stream's end.
    s = sim(ttft=0.01, itl=0.02)  # 8 events: about 0.15 s per request
    load = LoadSpec(concurrency=4, duration=30.0, warmup=0.1)
    r = runner(s.url, load, 2, Collect())
    task = asyncio.create_task(r.run(session))
    deadline = monotonic_ns() + 10_000_000_000
    while sum(x.phase == "measure" for x in r.records) < 8 and monotonic_ns() < deadline:
        await asyncio.sleep(0.01)
    before = monotonic_ns()
    r.stop()
    after = monotonic_ns()
    out = await asyncio.wait_for(task, 10)
    derived = derived_window(out.records, load)
    assert derived is not None
    assert out.footer.window_start == derived[0]
    assert before <= out.footer.window_end <= after
    assert max(last_instant(x) for x in out.records) > after  # the drain, left out


async def test_a_worker_that_dies_leaves_an_incomplete_run_with_its_records_kept(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    # Requests of ~80 ms: the one loop turn in which a just-sent request is not yet announced
    # (its `s` frame waits for the turn's end) is a negligible share of a user's time.
    s = sim(ttft=0.002, itl=0.01)
    sink = Collect()
    r = runner(s.url, LoadSpec(concurrency=2, duration=30.0), 2, sink)
    task = asyncio.create_task(r.run(session))
    deadline = monotonic_ns() + 10_000_000_000
    while len(sink.records) < 10 and monotonic_ns() < deadline:
        await asyncio.sleep(0.01)
    os.kill(r._workers[0].channel.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    r.stop()  # the other worker finishes its streams
    out = await asyncio.wait_for(task, 10)
    assert out.ended == "incomplete" and out.incomplete is not None
    assert "worker 0" in out.incomplete and "SIGKILL" in out.incomplete
    assert len(sink.records) >= 10 and r.records == sink.records
    # Worker 0 ran user 0 (requests 0, 2, 4, ...): its one in flight is recorded as lost.
    lost = [x for x in out.records if x.error is ErrorKind.LOST]
    # (A closed-loop user sends its next request in the same step that records its last.)
    assert len(lost) == 1 and lost[0].seq % 2 == 0 and lost[0].t_end is None
    assert len({x.seq for x in out.records}) == len(out.records)


async def test_a_run_stopped_before_its_workers_start_ends_cleanly(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    r = runner(s.url, LoadSpec(concurrency=4, duration=30.0), 2, Collect())
    r.stop()  # as a first Ctrl-C during start-up does
    out = await asyncio.wait_for(r.run(session), 20)
    assert out.ended == "stopped" and out.records == []


class CountingServer:
    """A keep-alive chat server on a thread (one connection at a time is enough here) that
    knows where in its byte stream each request began; `arrived()` is how many bytes reached it
    so far, read or still waiting in the socket (counted under one lock, so none is missed)."""

    BODY = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.total = 0  # bytes read from every connection
        self.starts: list[int] = []  # where each request began, in bytes read before it
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _recv(self, c: socket.socket) -> bytes:
        select.select([c], [], [], 5)
        with self.lock:
            data = c.recv(65536)
            self.total += len(data)
        if not data:
            raise OSError("closed")
        return data

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError, ValueError):
            while True:
                while not buf:
                    buf = self._recv(c)
                with self.lock:
                    self.starts.append(self.total - len(buf))
                while b"\r\n\r\n" not in buf:
                    buf += self._recv(c)
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                while len(buf) < length:
                    buf += self._recv(c)
                buf = buf[length:]
                c.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY)
                )

    def arrived(self) -> int:
        with self.lock:
            return self.total + sum(self._waiting(c) for c in self.conns)

    @staticmethod
    def _waiting(c: socket.socket) -> int:
        n = array.array("i", [0])
        try:
            fcntl.ioctl(c, termios.FIONREAD, n)
        except OSError:
            return 0
        return n[0]

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


async def test_a_send_is_announced_after_its_bytes_left_and_before_its_record() -> None:
    """The `s` frame waits for the end of the loop turn that sent the request: written before
    the send, its encode and pipe write sat between t_intended and the request's bytes. On a
    kept-alive connection (every request after the first) the bytes are out by then. A record
    still never overtakes its `s` frame, even one emitted in the same turn (item 2 fails)."""
    srv = CountingServer()
    shard = Shard(run_id="t", index=0, count=1, endpoint=chat_endpoint(srv.url),
                  workload=FlakyWorkload({2}),  # type: ignore[arg-type]
                  load=LoadSpec(concurrency=1, requests=5))  # fmt: skip
    seen: list[tuple[str, int, int]] = []  # (frame kind, seq, requests arrived at the server)

    class Writer:
        def write(self, data: bytes) -> None:
            m = orjson.loads(data[4:])
            if m[0] in ("s", "r"):
                seen.append((m[0], m[1] if m[0] == "s" else unpack_record("t", m).seq,
                             srv.arrived()))  # fmt: skip

        async def drain(self) -> None:
            pass

    reader = asyncio.StreamReader()
    reader.feed_data(frame(pickle.dumps(shard)))
    reader.feed_data(message("go", monotonic_ns()))
    loop = asyncio.get_running_loop()
    install_eager_writes(loop)  # as a worker's loop: the bytes leave inside session.post
    try:
        await asyncio.wait_for(serve(reader, Writer()), 20)  # type: ignore[arg-type]
    finally:
        loop.set_task_factory(None)
        srv.close()
    assert [(k, seq) for k, seq, _ in seen] == [(k, n) for n in range(5) for k in "sr"]
    starts = dict(zip([0, 1, 3, 4], srv.starts, strict=True))  # request 2 was never sent
    for kind, seq, arrived in seen:
        if kind == "s" and seq in (1, 3, 4):  # its own request's bytes had reached the server
            assert arrived > starts[seq], (seq, arrived, starts)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("t_sent", None, "t_sent is None"), ("t_end", 1.5, "t_end is 1.5"),
     ("seq", "3", "seq is '3'"), ("ev_t", [1.5], "integer"), ("ev_t", [2**63], "too"),
     ("ev_n", [2**63], "too"), ("error", "no_such_kind", "no_such_kind")],
)  # fmt: skip
def test_a_record_frame_with_what_no_latency_can_use_is_refused(
    field: str, value: object, message: str
) -> None:
    """The runner's cheap checks: instants, event values (int64 arrays), error kinds."""
    m = pack_record(Record("r", 3, "measure", "chat", 10, 20, t_end=30, ev_t=(25,),
                           ev_kind="c", ev_n=(1,), status=200))  # fmt: skip
    names = [f.name for f in dataclasses.fields(Record) if f.name != "run_id"]
    m[1 + names.index(field)] = value
    with pytest.raises((ValueError, TypeError, OverflowError), match=re.escape(message)):
        unpack_record("r", orjson.loads(orjson.dumps(m)))
