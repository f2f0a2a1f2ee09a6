"""Runs against the simulator as a tracing server (sim/spans.py): its spans received by the run's
own OTLP receiver, joined with the records, counted where they do not match, and read back.

The simulator is a child process exporting OTLP/HTTP JSON to the receiver's port, as vLLM with
`--otlp-traces-endpoint` would; its `/sim/truth` says how many spans it dropped or sent twice on
purpose, which is what the join must count. Every check is against that account or against the
records, never against a wall-clock expectation.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from latbench.exporter import LatbenchMetrics, render_text
from latbench.records import read_records
from latbench.records.record import Record, ServerSpan
from latbench.run import BenchResult, run_benchmark
from latbench.shared.errors import LatbenchError
from latbench.sim import SimConfig, SimProcess
from latbench.sinks.prometheus import PrometheusSink, run_labels
from latbench.spec import load_spec

FAST = {"ttft": 0.01, "itl": 0.002}
REQUESTS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    tmp: Path,
    sim: dict[str, Any],
    *,
    span_wait: float = 8.0,
    metrics: LatbenchMetrics | None = None,
    requests: int = REQUESTS,
    target: dict[str, Any] | None = None,
) -> tuple[BenchResult, dict[str, Any], dict[str, Any]]:
    """A run of `requests` against a tracing simulator: its result, results.json and the
    simulator's span counts. `target` adds to the spec's target."""
    port = free_port()
    cfg = SimConfig(**{**FAST, **sim, "otlp_traces_endpoint": f"http://127.0.0.1:{port}/v1/traces"})
    with SimProcess(cfg) as proc:
        spec = load_spec(
            {
                "name": "spans",
                "target": {
                    "base_url": proc.url,
                    "otlp_receiver": f"127.0.0.1:{port}",
                    "span_wait": span_wait,
                    "server_metrics": "off",
                    **(target or {}),
                },
                "workload": {"input_tokens": 16, "output_tokens": 8},
                "load": {"concurrency": 4, "requests": requests, "warmup_requests": 4},
                "output_dir": str(tmp),
            }
        )
        console = Console(file=io.StringIO(), width=200)
        result = asyncio.run(run_benchmark(spec, proc.url, console, metrics=metrics))
        with urllib.request.urlopen(proc.url + "/sim/truth?raw=1", timeout=10) as r:
            counts = json.load(r)["spans"]
    return result, orjson.loads(result.results_path.read_bytes()), counts


def measured_ok(records: list[Record]) -> list[Record]:
    return [r for r in records if r.phase == "measure" and r.ok]


def test_every_request_is_joined_and_summary_reads_the_same_join_back(tmp_path: Path) -> None:
    result, results, counts = run(tmp_path, {})
    f = read_records(result.records_path)
    measured = measured_ok(f.records)
    assert len(measured) == REQUESTS - 4
    # Every request's span came (warm-up's too), once, and each is in the records file.
    assert counts["dropped"] == counts["duplicated"] == 0
    assert len(f.spans) == counts["exported"] == REQUESTS
    assert {s.trace_id for s in f.spans} == {r.trace_id for r in f.records}
    join = result.spans
    assert join is not None
    assert join.matched == len(measured)
    assert (join.requests_without_span, join.spans_without_request, join.duplicate_spans) == (
        0,
        0,
        0,
    )
    assert join.token_mismatches == 0
    for r in join.requests:
        assert r.server_ttft is not None and r.client_ttft is not None
        assert 0 < r.server_ttft <= r.client_ttft
        assert r.outside_ttft is not None and 0 < r.outside_ttft < 0.05  # loopback
        assert r.client_tokens == r.server_tokens == 8
    # The span lines come before the footer, the footer is last.
    lines = result.records_path.read_bytes().splitlines()
    kinds = [orjson.loads(line)["type"] for line in lines]
    assert kinds[0] == "header" and kinds[-1] == "footer" and "span" in kinds
    # `latbench summary --json` recomputes results.json's join from the records file alone.
    out = subprocess.run(
        [sys.executable, "-m", "latbench", "summary", str(result.records_path), "--json"],
        capture_output=True,
    )
    # Its verdict is the run's (a busy test machine can make it client-bound: exit 4).
    assert out.returncode in (0, 4), out.stderr.decode()
    assert orjson.loads(out.stdout)["server_spans"] == results["server_spans"]
    assert results["server_spans"]["matched"] == len(measured)


def test_dropped_spans_are_counted_as_requests_without_one(tmp_path: Path) -> None:
    metrics = LatbenchMetrics()
    # A short wait: the missing spans never come, so the run must not hang on them.
    sim = {"span_drop": 0.3, "seed": 7}
    result, results, counts = run(tmp_path, sim, span_wait=1.0, metrics=metrics)
    f = read_records(result.records_path)
    join = result.spans
    assert join is not None and counts["dropped"] > 0
    have = {s.trace_id for s in f.spans}
    without = [r for r in measured_ok(f.records) if r.trace_id not in have]
    assert len(without) > 0
    assert join.requests_without_span == len(without)
    assert join.matched + join.requests_without_span == len(measured_ok(f.records))
    assert len(f.spans) == REQUESTS - counts["dropped"]
    assert any("got no server span" in w for w in results["warnings"])
    # The live Prometheus join counts the same.
    spans_total = samples(metrics, "latbench_spans_total")
    assert spans_total["matched"] == join.matched
    assert spans_total["request_without_span"] == join.requests_without_span
    assert spans_total["span_without_request"] == spans_total["duplicate"] == 0


def test_duplicate_spans_are_counted_once_each_and_change_no_figure(tmp_path: Path) -> None:
    metrics = LatbenchMetrics()
    result, _, counts = run(tmp_path, {"span_duplicate": 0.3, "seed": 3}, metrics=metrics)
    f = read_records(result.records_path)
    join = result.spans
    assert join is not None and counts["duplicated"] > 0
    assert len(f.spans) == REQUESTS + counts["duplicated"]
    assert join.duplicate_spans == counts["duplicated"]
    assert join.matched == len(measured_ok(f.records)) and join.requests_without_span == 0
    spans_total = samples(metrics, "latbench_spans_total")
    assert spans_total["matched"] == join.matched
    # The live join sees the warm-up's duplicates too: each one is a duplicate of its trace.
    assert spans_total["duplicate"] == counts["duplicated"]
    server_ttft = samples(metrics, "latbench_server_ttft_seconds")
    assert server_ttft["count"] == join.matched
    outside = samples(metrics, "latbench_outside_ttft_seconds")
    assert outside["count"] == join.matched
    assert outside["sum"] == pytest.approx(sum(r.outside_ttft or 0 for r in join.requests))


@pytest.mark.parametrize("offset_s", [3600.0, -3600.0])
def test_clock_skew_between_hosts_changes_no_per_request_figure(
    tmp_path: Path, offset_s: float
) -> None:
    result, results, _ = run(tmp_path, {"span_clock_offset_s": offset_s})
    f = read_records(result.records_path)
    join = result.spans
    assert join is not None and join.matched == len(measured_ok(f.records))
    assert join.requests_without_span == 0
    by_trace: dict[str, ServerSpan] = {s.trace_id: s for s in f.spans}
    assert f.header is not None
    for r in join.requests:
        span = by_trace[r.trace_id]
        # The span's wall clock is an hour off the client's, and nothing cares ...
        assert span.start_unix_ns is not None
        wall_send = f.header.clock_wall_ns + (
            next(x for x in f.records if x.trace_id == r.trace_id).t_sent
            - f.header.clock_monotonic_ns
        )
        assert abs((span.start_unix_ns - wall_send) / 1e9 - offset_s) < 5
        # ... the figures are each side's own durations: the same as on one clock.
        assert r.server_ttft == span.ttft_s
        assert r.client_ttft is not None and r.server_ttft is not None
        assert 0 < r.outside_ttft < 0.05  # type: ignore[operator]
    # The skew estimate says what it saw: about the offset.
    skew = results["server_spans"]["clock_skew"]
    assert skew["median"] == pytest.approx(offset_s, abs=5)


def test_spans_sent_after_the_last_request_are_waited_for(tmp_path: Path) -> None:
    # The simulator holds each finished span 2 s before sending it (a batch delay, as vLLM's
    # 5 s): every span of the last requests arrives after the run's last request ended.
    result, _, _ = run(tmp_path, {"span_delay_s": 2.0}, span_wait=10.0, requests=12)
    f = read_records(result.records_path)
    assert f.footer is not None
    last_end = max(r.t_end for r in f.records if r.t_end is not None)
    assert max(s.received_ns for s in f.spans) > last_end + 1_000_000_000
    join = result.spans
    assert join is not None and join.requests_without_span == 0
    assert join.matched == len(measured_ok(f.records))


def test_a_wait_too_short_counts_the_late_spans_as_missing(tmp_path: Path) -> None:
    result, results, _ = run(tmp_path, {"span_delay_s": 3.0}, span_wait=0.2, requests=12)
    join = result.spans
    f = read_records(result.records_path)
    if join is None:  # not even the first batch came in time
        assert not f.spans
        assert any("got no span" in w for w in results["warnings"])
        return
    assert join.requests_without_span > 0


def samples(metrics: LatbenchMetrics, family: str) -> dict[str, float]:
    """One family's samples for the run's only label set: by `match` for the counter, `count`
    and `sum` for a histogram."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(render_text(metrics).decode()):
        if fam.name != family.removesuffix("_total"):
            continue
        for s in fam.samples:
            if "match" in s.labels:
                out[s.labels["match"]] = s.value
            elif s.name.endswith("_count"):
                out["count"] = s.value
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
    return out


def test_a_run_whose_requests_all_failed_still_writes_its_results(tmp_path: Path) -> None:
    """No request succeeded, so no span came and none is missing: no join, no crash, and
    results.json written (r1 item 1: this dereferenced a join that was None)."""
    fail = {"faults": [{"kind": "http_status", "every": 1, "status": 500}]}
    result, results, counts = run(tmp_path, fail, span_wait=1.0, requests=8)
    assert counts["exported"] == 0
    assert result.spans is None and results["server_spans"] is None
    assert result.summary.requests.failed == 8 - 4
    assert not any("span" in w for w in results["warnings"])
    # What the receiver saw is in the records file's footer, for `latbench summary` too.
    f = read_records(result.records_path)
    assert f.footer is not None and f.footer.span_receiver is not None
    assert f.footer.span_receiver["payloads"] == 0


def test_retried_requests_split_from_their_last_attempt_live_and_after(tmp_path: Path) -> None:
    """A request refused with 429 and retried: the server's span describes the attempt that was
    answered, so both joins (results.json and the live outside_ttft histogram) take the
    client's TTFT from the last send, and agree (r1 item 3)."""
    metrics = LatbenchMetrics()
    retry = {"retry": {"max_retries": 8, "backoff": 0.05, "max_wait": 5}}
    result, results, _ = run(
        tmp_path, {"rate_limit": 10}, metrics=metrics, requests=28, target=retry
    )
    join = result.spans
    assert join is not None and join.requests_without_span == 0
    retried = [r for r in join.requests if r.retried]
    assert retried, "the rate limit refused none: no retry to check"
    f = read_records(result.records_path)
    by_seq = {r.seq: r for r in f.records}
    for r in retried:
        rec = by_seq[r.seq]
        assert rec.t_last_sent is not None
        assert r.client_ttft == (rec.ev_t[0] - rec.t_last_sent) / 1e9
        assert r.outside_ttft is not None and 0 < r.outside_ttft < 0.05
    outside = samples(metrics, "latbench_outside_ttft_seconds")
    assert outside["count"] == join.matched
    rows = results["server_spans"]["requests"]
    assert outside["sum"] == pytest.approx(sum(r["outside_ttft"] for r in rows))


def test_a_receiver_that_cannot_listen_leaves_no_run_directory(tmp_path: Path) -> None:
    """The receiver binds before anything is made: a port in use is a clear error and the
    output folder stays empty (r1 item 12)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = load_spec(
            {
                "target": {"otlp_receiver": f"127.0.0.1:{port}", "server_metrics": "off"},
                "load": {"requests": 2},
                "output_dir": str(tmp_path / "out"),
            }
        )
        console = Console(file=io.StringIO(), width=200)
        with pytest.raises(LatbenchError, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(run_benchmark(spec, "http://127.0.0.1:9", console))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ctrl_c_skips_the_wait_for_spans(tmp_path: Path) -> None:
    """`latbench run` waits for the spans still missing and says Ctrl-C skips it; a SIGINT
    then ends the wait at once, the run keeps its verdict and writes its results, the missing
    spans counted (r1 item 7)."""
    port = free_port()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "sim: {ttft: 0.005, itl: 0.001, span_delay_s: 600, "
        f"otlp_traces_endpoint: 'http://127.0.0.1:{port}/v1/traces'}}\n"
        f"target: {{otlp_receiver: '127.0.0.1:{port}', span_wait: 120}}\n"
    )
    cmd = [sys.executable, "-m", "latbench", "run", "--spec", str(spec), "--requests", "6",
           "--out", str(tmp_path / "out")]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if "(Ctrl-C skips)" in line:
                break
        assert line is not None, "the run never said it waits for spans"
        assert "for 6 server span(s)" in line
        signalled = time.monotonic()
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        p.kill()
    rest = "".join(iter(lines.get, None))
    assert took < 20, f"the run ended {took:.1f} s after the interrupt"
    assert "skipping the wait for spans" in rest
    assert "in-flight ones finish" not in rest
    assert code in (0, 4), rest  # the verdict, not an interrupted run's 130
    (run_dir,) = (tmp_path / "out").iterdir()
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["server_spans"] is None  # the simulator still held every span
    assert any("got no span" in w for w in results["warnings"])


def test_a_sink_of_a_run_without_a_receiver_counts_no_span_missing() -> None:
    # Every request carries a trace id, but without a receiver no span can come: the live
    # series must not call each measured request one "without a span" (a false alarm on the
    # dashboard's "Spans matched" panel), while a sink that expects spans does.
    def record(seq: int) -> Record:
        return Record(
            "r", seq, "measure", "chat", 0, 10, t_headers=20, t_end=40, ev_t=(30,),
            ev_kind="c", status=200, trace_id=f"{seq + 1:032x}",
        )  # fmt: skip

    for expects, missing in ((False, 0), (True, 3)):
        metrics = LatbenchMetrics()
        sink = PrometheusSink(metrics, run_labels(None, "m", "chat", "s"), (), spans=expects)
        for seq in range(3):
            sink.add(record(seq))
        sink.close(None)
        (series,) = metrics.all_series()
        assert series.spans["request_without_span"] == missing
        assert series.spans["matched"] == 0
