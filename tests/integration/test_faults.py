"""The fault matrix: `latbench run` against a hostile server (tests/kit/hostile.py) that mixes bad
responses with good ones, over real sockets.

Each run asserts that every hostile request is a record with its error kind and a detail that
names the problem, that every good request's record is intact, that the run completes
(results.json written, every measured request in records.jsonl), and that the latbench process
tree stayed within a stated peak RSS. The peak is `ru_maxrss` from `os.wait4` on the latbench
process: on Linux that is the largest peak of the process and of every descendant it reaped
(its workers), which `test_the_peak_rss_counts_reaped_descendants_and_not_pytest` checks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit import hostile
from kit.cli import COMMAND, latbench

from latbench import ErrorKind
from latbench.records import Record, read_records

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss of reaped children")

# With max_failed_fraction 1 and no SLO, a run that completed passes: 0, or 4 when the loaded
# box made it client-bound. An incomplete run (1), a failed-share verdict (6) or an SLO miss (3)
# is wrong here.
EXIT_OK = {0, 4}
RSS_BOUND_MIB = 300
SECRET = "sk-hostile-secret-1234"


@dataclass
class Run:
    rc: int
    stderr: str
    peak_rss_mib: float
    wall_s: float
    records: list[Record]
    results: Path


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[hostile.HostileServer, hostile.Sink]]:
    # Every run's preflight also reads a list of 10,000 models.
    running, srv, sink = hostile.start(
        big=50 << 20, flood=102_400, slow_s=3.0, hold_s=20.0, models=10_000
    )
    yield srv, sink
    running.close()


# Runs a command and reports its peak RSS. A process's ru_maxrss starts at the peak of the
# memory it was exec'ed from (Linux keeps the old mm's high-water mark across exec), so the
# command is started from this small launcher, never straight from pytest, whose own peak
# would be the floor of every measure.
LAUNCHER = """
import os, subprocess, sys, threading
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
timer = threading.Timer(float(sys.argv[1]), p.kill)
timer.start()
_, status, usage = os.wait4(p.pid, 0)
timer.cancel()
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def run_measured(args: list[str], timeout: float, stderr: Path) -> tuple[int, float]:
    """Exit code and peak RSS (MiB) of `args` and its reaped descendants; killed at `timeout`."""
    with stderr.open("wb") as err:
        p = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(timeout), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout + 30,
            check=True,
        )
    rc, kib = p.stdout.split()
    return int(rc), int(kib) / 1024


def latbench_run(
    tmp: Path, target: str, n: int | None, *extra: str, timeout: float = 60, spec_yaml: str = ""
) -> Run:
    """`latbench run` of `n` requests (None: `extra` gives a --duration, and every request the
    run sent must have its record)."""
    spec = tmp / "spec.yaml"
    # Every failure here is on purpose: the verdict on the failed share is another test's.
    spec.write_text("validity:\n  max_failed_fraction: 1\n" + spec_yaml)
    out = tmp / "out"
    count = ["--requests", str(n), "--concurrency", "2"] if n is not None else []
    args = [
        *COMMAND, "run", "--spec", str(spec), "--target", target,
        "--model", hostile.MODEL, *count,
        "--first-token-timeout", "1", "--idle-timeout", "2", "--total-timeout", "20",
        "--server-metrics", "off", "--out", str(out), *extra,
        # No calibration requests: the hostile modes are dealt to chat requests in turn, and
        # probes (the server has no /tokenize) would take the first of them.
        "--tokenizer", "words",
    ]  # fmt: skip
    err = tmp / "stderr.txt"
    t0 = time.monotonic()
    rc, rss = run_measured(args, timeout, err)
    wall = time.monotonic() - t0
    stderr = err.read_text(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert rc in EXIT_OK, (rc, stderr[-3000:])
    (run_dir,) = out.iterdir()
    results = run_dir / "results.json"
    assert results.is_file(), stderr[-3000:]
    recs = read_records(run_dir / "records.jsonl").records
    measured = sorted((r for r in recs if r.phase == "measure"), key=lambda r: r.seq)
    sent = n if n is not None else len(recs)
    assert [r.seq for r in measured] == list(range(sent)), "every request has its record"
    return Run(rc, stderr, rss, wall, measured, results)


def assert_good(rec: Record) -> None:
    """A good stream's record, whole: four tokens with their usage."""
    assert rec.ok, rec.error_detail
    assert len(rec.ev_t) == hostile.TOKENS and rec.usage_completion_tokens == hostile.TOKENS
    assert rec.finish_reason == "length" and rec.usage_prompt_tokens == 3


def match(
    run: Run, expected: dict[str, tuple[set[ErrorKind], str]], goods: int, others: int = 0
) -> dict[str, Record]:
    """Pair each hostile mode with the one failed record whose detail names its problem (with
    two streams in flight the order of arrival is not the order of `seq`)."""
    failed = [r for r in run.records if not r.ok]
    found: dict[str, Record] = {}
    for mode, (kinds, needle) in expected.items():
        hits = [r for r in failed if needle in (r.error_detail or "")]
        assert len(hits) == 1, (mode, needle, [r.error_detail for r in failed])
        assert hits[0].error in kinds, (mode, hits[0].error, hits[0].error_detail)
        found[mode] = hits[0]
    assert len(failed) == len(expected) + others, [r.error_detail for r in failed]
    ok = [r for r in run.records if r.ok]
    assert len(ok) == goods
    for rec in ok:
        assert_good(rec)
    return found


def interleave(modes: list[str]) -> list[str]:
    """Each hostile mode followed by a good stream."""
    return [m for mode in modes for m in (mode, hostile.GOOD)]


M = ErrorKind.MALFORMED_STREAM
PARSE_CASES: dict[str, tuple[set[ErrorKind], str]] = {
    "usage_float": ({M}, "usage.completion_tokens is 1.5, not a non-negative integer"),
    "usage_bigint": ({M}, "usage.completion_tokens is 1.1805916207174113e+21, not a"),
    "usage_over_2_53": ({M}, "usage.completion_tokens is 9007199254740993, over 2**53"),
    "usage_negative": ({M}, "usage.completion_tokens is -5, not a non-negative integer"),
    "usage_string": ({M}, "usage.completion_tokens is '7', not a non-negative integer"),
    "usage_bool": ({M}, "usage.completion_tokens is True, not a non-negative integer"),
    "usage_object": ({M}, "usage.completion_tokens is {'n': 1}, not a non-negative integer"),
    "usage_down": ({M}, "cumulative completion token count went down, from 5 to 3"),
    "invalid_utf8": ({M}, "event is not JSON (str is not valid UTF-8"),
    "invalid_json": ({M}, "event is not JSON (unexpected end of data"),
    "html": ({M}, "not an event stream: HTTP 200 with Content-Type 'text/html; charset=utf-8'"),
    "json_body": ({M}, "not an event stream: HTTP 200 with Content-Type 'application/json'"),
    "html_stalled": ({M}, "not an event stream: HTTP 200 with Content-Type 'text/html'"),
    "error_stalled": ({ErrorKind.HTTP_STATUS}, "HTTP 500"),
    "bad_chunk": ({M}, "malformed chunked encoding: Invalid character in chunk size"),
    "chunk_overrun": ({M}, "malformed chunked encoding: Expected LF after chunk data"),
}


def test_bad_events_bodies_and_usage_are_malformed_and_lose_nothing(servers, tmp_path) -> None:
    srv, _ = servers
    modes = interleave(list(PARSE_CASES))
    run = latbench_run(tmp_path, srv.cycle(modes), len(modes))
    found = match(run, PARSE_CASES, goods=len(PARSE_CASES))
    # A fault after the first token keeps that token; its bad usage never reaches the record.
    # (Not the chunk errors: a worker that read the headers, the token and the bad chunk in one
    # read has the response fail whole, with the same detail, and keeps nothing.)
    for mode in ("usage_float", "usage_bigint", "usage_negative", "invalid_json"):
        rec = found[mode]
        assert len(rec.ev_t) == 1 and rec.usage_completion_tokens == 1, (mode, rec)
    assert len(found["usage_down"].ev_t) == 2 and found["usage_down"].usage_completion_tokens == 5
    # The chunked-encoding errors are prompt, not the 2 s idle timeout (the server holds the
    # connection open for 20 s): each record ends within 1 s of its last sign of life.
    for mode in ("bad_chunk", "chunk_overrun"):
        rec = found[mode]
        last = rec.ev_t[-1] if len(rec.ev_t) else rec.t_headers or rec.t_sent
        assert rec.t_end is not None and rec.t_end - last < 1e9, (mode, rec)
    assert run.peak_rss_mib < RSS_BOUND_MIB
    print(f"\nparse faults: peak RSS {run.peak_rss_mib:.0f} MiB, {run.wall_s:.1f} s")


def test_redirects_are_not_followed_and_resets_are_classified(servers, tmp_path) -> None:
    srv, sink = servers
    redirects = {
        f"redirect_{s}": (
            {ErrorKind.REDIRECTED},
            f"HTTP {s} redirect to {sink.url}/v1/chat/completions; not followed",
        )
        for s in (301, 302, 303, 307, 308)
    }
    others = {
        "reset_before_headers": ({ErrorKind.CONNECTION_RESET}, ""),
        "reset_after_headers": ({ErrorKind.STREAM_TRUNCATED}, ""),
        "reset_mid_stream": ({ErrorKind.STREAM_TRUNCATED}, ""),
        "slow_headers": ({ErrorKind.TIMEOUT_FIRST_TOKEN}, "no token within 1 s"),
    }
    modes = interleave([*redirects, *others])
    before = sink.connections
    run = latbench_run(
        tmp_path,
        srv.cycle(modes),
        len(modes),
        "--api-key-env",
        "HOSTILE_KEY",
        "--header",
        f"x-api-key: {SECRET}",
        "--header",
        f"x-custom-token: {SECRET}",
    )
    found = match(run, redirects, goods=len(modes) // 2, others=len(others))
    for rec in found.values():
        assert len(rec.ev_t) == 0 and 300 <= (rec.status or 0) < 400
    # Not one connection reached the other origin, so no header (and no key) went there.
    assert sink.connections == before and not sink.received
    failed = sorted(
        (r for r in run.records if not r.ok and r.error is not ErrorKind.REDIRECTED),
        key=lambda r: str(r.error),
    )
    assert len(failed) == len(others), [(r.error, r.error_detail) for r in failed]
    # Resets before the headers are connection resets; after them (a reset or a close), the
    # stream was cut short.
    kinds = sorted(str(r.error) for r in failed)
    assert kinds == [
        "connection_reset",
        "stream_truncated",
        "stream_truncated",
        "timeout_first_token",
    ]
    assert all(r.error_detail for r in failed)
    assert run.peak_rss_mib < RSS_BOUND_MIB
    print(f"\nconnection faults: peak RSS {run.peak_rss_mib:.0f} MiB, {run.wall_s:.1f} s")


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTILE_KEY", SECRET)


@pytest.mark.parametrize(
    ("mode", "detail"),
    [
        ("oversized_line", "an event line over 1,048,576 bytes"),
        ("oversized_event", "an event over 4,194,304 bytes"),
    ],
)
def test_oversized_lines_and_events_stop_at_the_cap(servers, tmp_path, mode, detail) -> None:
    # Two requests each send a 50 MB line (or event) without an end; memory stays bounded by
    # the cap, and time by what is read up to it.
    srv, _ = servers
    run = latbench_run(tmp_path, srv.cycle(interleave([mode, mode])), 4)
    bad = [r for r in run.records if not r.ok]
    assert len(bad) == 2
    for rec in bad:
        assert rec.error is ErrorKind.OVERSIZED_EVENT and rec.error_detail == detail
        assert len(rec.ev_t) == 1  # the token before it is kept
    for rec in run.records:
        if rec.ok:
            assert_good(rec)
    assert run.peak_rss_mib < RSS_BOUND_MIB and run.wall_s < 20
    print(f"\n{mode}: peak RSS {run.peak_rss_mib:.0f} MiB, {run.wall_s:.1f} s")


def test_a_flood_of_tiny_events_is_read_whole_in_bounded_memory(servers, tmp_path) -> None:
    srv, _ = servers
    run = latbench_run(tmp_path, srv.cycle(interleave(["flood"])), 4)
    floods = [r for r in run.records if len(r.ev_t) > hostile.TOKENS]
    assert len(floods) == 2
    for rec in floods:
        assert rec.ok and len(rec.ev_t) == srv.flood == rec.usage_completion_tokens
    assert sum(1 for r in run.records if r.ok) == 4
    assert run.peak_rss_mib < RSS_BOUND_MIB and run.wall_s < 30
    print(f"\nflood: peak RSS {run.peak_rss_mib:.0f} MiB, {run.wall_s:.1f} s")


def test_an_endless_stream_is_cut_at_the_overtime_and_the_others_are_kept(
    servers, tmp_path
) -> None:
    # Every fifth request gets tokens every 10 ms, forever. --duration 2 with load.overtime 1:
    # those still in flight 1 s after the duration ended are cut and recorded as overtime (a
    # failure of the server to finish, counted in the failed share), and the run ends then,
    # not at the 20 s total timeout.
    srv, _ = servers
    before = srv.served["endless"]
    run = latbench_run(
        tmp_path,
        srv.target("endless", every=5),
        None,
        "--duration", "2s", "--warmup", "0s", "--rate", "10", "--concurrency", "16",
        spec_yaml="load:\n  overtime: 1\n",
    )  # fmt: skip
    endless = srv.served["endless"] - before
    cut = [r for r in run.records if not r.ok]
    assert endless >= 2 and len(cut) == endless, [(r.error, r.error_detail) for r in cut]
    for rec in cut:
        assert rec.error is ErrorKind.OVERTIME, (rec.error, rec.error_detail)
        assert len(rec.ev_t) > 50  # what it streamed before the cut is kept
    good = [r for r in run.records if r.ok]
    assert len(good) >= 5
    for rec in good:
        assert_good(rec)
    # duration + overtime + the start (preflight, a worker) and the end (results): 2 + 1 + 10.
    assert run.wall_s < 13, run.wall_s
    assert run.peak_rss_mib < RSS_BOUND_MIB
    print(f"\nendless: peak RSS {run.peak_rss_mib:.0f} MiB, {run.wall_s:.1f} s")


def test_the_peak_rss_counts_reaped_descendants_and_not_pytest(tmp_path) -> None:
    # The bound above is only as good as this: a child that reaps a 200 MiB grandchild reports
    # that peak, though it never held 200 MiB itself; and pytest's own memory is no floor.
    grandchild = "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    rc, rss = run_measured([sys.executable, "-c", code], 30, tmp_path / "err")
    assert rc == 0 and rss > 200
    ballast = bytearray(300 << 20)  # this process's peak, now over 300 MiB
    ballast[::4096] = b"x" * len(ballast[::4096])
    rc, rss = run_measured([sys.executable, "-c", "pass"], 30, tmp_path / "err")
    assert rc == 0 and rss < 60, rss
    del ballast


def test_a_huge_model_list_is_named_briefly(servers, tmp_path) -> None:
    # Every run above found its model in a list of 10,000; a model not in it is one short error.
    srv, _ = servers
    args = ["run", "--target", srv.url, "--model", "nope", "--requests", "1"]
    p = latbench(*args, "--server-metrics", "off", "--out", str(tmp_path), timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "model 'nope' is not served" in p.stderr and len(p.stderr) < 2000, p.stderr


def test_the_preflight_follows_no_redirect_either(servers, tmp_path) -> None:
    # /v1/models is the first request that carries the key: a redirect there is refused too.
    srv, sink = servers
    before = sink.connections
    args = ["run", "--target", f"{srv.url}/moved", "--api", "anthropic", "--model", "m"]
    p = latbench(
        *args, "--api-key-env", "HOSTILE_KEY", "--requests", "1", "--server-metrics", "off",
        "--out", str(tmp_path), timeout=60,
    )  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr
    said = " ".join(p.stderr.split())  # the error is wrapped to the terminal's width
    assert f"redirects (HTTP 307) to {sink.url}/v1/chat/completions;" in said, p.stderr
    assert sink.connections == before and not sink.received
