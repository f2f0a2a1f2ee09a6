"""The Prometheus exporter: buckets per the contract, every exported figure equal to the exact
summary of the same records, bounded series, `/metrics` served live from `latbench run`, the
linger, and pushes to a real Pushgateway.

Each test runs latbench itself against the simulator over loopback and parses what a scraper
would read, rather than inspecting the exporter's internals.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kit.cli import latbench, spawn
from kit.promql import PROMTOOL, Pushgateway, free_port, http_get, stop_pid, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from rich.console import Console

from latbench.exporter import (
    HISTOGRAMS,
    LatbenchMetrics,
    MetricsExport,
    RunLabels,
    location_label,
    parse_listen,
    render_text,
    target_label,
)
from latbench.exporter.push import grouping_key
from latbench.exporter.series import (
    E2E_BUCKETS,
    ITL_BUCKETS,
    LOOP_LAG_BUCKETS,
    MAX_LOCATIONS,
    QUEUE_DELAY_BUCKETS,
    TTFT_BUCKETS,
)
from latbench.records import read_records
from latbench.run import BenchResult, run_benchmark
from latbench.shared.buckets import (
    VLLM_ITL_BUCKETS,
    VLLM_REQUEST_LATENCY_BUCKETS,
    VLLM_TTFT_BUCKETS,
)
from latbench.sim import SimConfig, SimProcess
from latbench.spec import Slo, load_spec
from latbench.summary import Summary, record_samples, summarize

LATENCY_KEYS = ("ttft", "ttfo", "itl", "itl_per_token", "tpot", "e2e")


# ---------------------------------------------------------------------------------------------
# Buckets and labels: the contract in METRICS.md, "Prometheus"


@pytest.mark.parametrize(
    ("buckets", "vllm"),
    [
        (TTFT_BUCKETS, VLLM_TTFT_BUCKETS),
        (ITL_BUCKETS, VLLM_ITL_BUCKETS),
        (E2E_BUCKETS, VLLM_REQUEST_LATENCY_BUCKETS),
        (QUEUE_DELAY_BUCKETS, VLLM_REQUEST_LATENCY_BUCKETS),
    ],
)
def test_buckets_hold_vllms_boundaries_the_target_and_finer_ones_near_it(
    buckets: tuple[float, ...], vllm: tuple[float, ...]
) -> None:
    assert list(buckets) == sorted(set(buckets))
    assert set(vllm) <= set(buckets)
    assert 0.1 in buckets  # exactly: le="0.1" over the count is the exact attainment
    # Finer than vLLM's own boundaries on both sides of 100 ms.
    below = max(b for b in buckets if b < 0.1)
    above = min(b for b in buckets if b > 0.1)
    assert 0.1 - below < 0.0101 and above - 0.1 < 0.0251
    assert below > max((b for b in vllm if b < 0.1), default=0)
    assert above < min(b for b in vllm if b > 0.1)


def test_e2e_buckets_reach_below_vllms_first_boundary() -> None:
    assert min(VLLM_REQUEST_LATENCY_BUCKETS) == 0.3
    assert len([b for b in E2E_BUCKETS if b < 0.3]) >= 8
    assert 0.001 in LOOP_LAG_BUCKETS and 0.01 in QUEUE_DELAY_BUCKETS  # the validity limits


def test_each_histogram_has_its_contract_name() -> None:
    names = {h.name for h in HISTOGRAMS}
    for key in (*LATENCY_KEYS, "queue_delay", "event_loop_lag"):
        assert f"latbench_{key}_seconds" in names


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (None, "builtin-sim"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://user:secret@llm.example:443/base/?x=1#f", "https://llm.example:443/base"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
    ],
)
def test_target_label_is_bounded_and_has_no_credentials(url: str | None, label: str) -> None:
    assert target_label(url) == label


@pytest.mark.parametrize(
    ("locations", "label"),
    [
        (None, "local"),
        (["eu-west"], "eu-west"),
        (["eu-west", "eu-west"], "eu-west"),
        ([None], "remote"),
        (["eu-west", "us-east"], "mixed"),
        (["eu-west", None], "mixed"),
    ],
)
def test_location_label_says_where_the_load_came_from(
    locations: list[str | None] | None, label: str
) -> None:
    assert location_label(locations) == label


def test_location_label_values_are_bounded_however_many_places_agents_name() -> None:
    metrics = LatbenchMetrics()
    base = RunLabels("t", "m", "chat", "s")
    assert base.location == "local"
    kept = [metrics.series(replace(base, location=f"zone-{i}")).labels for i in range(40)]
    assert [x.location for x in kept[:MAX_LOCATIONS]] == [f"zone-{i}" for i in range(32)]
    assert {x.location for x in kept[MAX_LOCATIONS:]} == {"other"}
    # A location already in use keeps its own series; the fixed values never count.
    assert metrics.series(replace(base, location="zone-3")).labels.location == "zone-3"
    for fixed in ("local", "remote", "mixed"):
        assert metrics.series(replace(base, location=fixed)).labels.location == fixed
    text = render_text(metrics).decode()
    assert len({line.split('location="')[1].split('"')[0]
                for line in text.splitlines() if 'location="' in line}) == 32 + 4  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9400", ("127.0.0.1", 9400)),
        ("0.0.0.0:9400", ("0.0.0.0", 9400)),
        ("[::1]:9400", ("::1", 9400)),
        ("0", ("127.0.0.1", 0)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["x", "70000", "host:"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


# ---------------------------------------------------------------------------------------------
# The exporter against the exact summary of the same run


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Run = tuple[CollectorRegistry, BenchResult, Summary, LatbenchMetrics]


def scrape(registry: CollectorRegistry) -> Samples:
    """Sample name + labels -> value, parsed from the exposition a scraper reads."""
    text = generate_latest(registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def series_of(samples: Samples, name: str, **labels: str) -> dict[frozenset[Any], float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def one(samples: Samples, name: str, **labels: str) -> float:
    found = series_of(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def bench(url: str, registry_metrics: LatbenchMetrics, out: Path, **load: Any) -> BenchResult:
    spec = load_spec(
        {
            "name": load.pop("name", "unit"),
            "target": {"base_url": url, "api": "chat"},
            "workload": {"input_tokens": 16, "output_tokens": load.pop("output_tokens", 9)},
            "load": {"concurrency": 4, **load},
            "output_dir": str(out),
        }
    )
    console = Console(file=io.StringIO())
    return asyncio.run(run_benchmark(spec, url, console, metrics=registry_metrics))


@pytest.fixture(scope="module")
def faulty_sim() -> Iterator[SimProcess]:
    """TTFT spread across 100 ms, reasoning tokens (TTFO != TTFT), two tokens per event
    (ITL per token != ITL), and an HTTP 500 on every 7th request."""
    config = {
        "model": "sim-unit",
        "ttft": {"kind": "normal", "mean": 0.08, "std": 0.03, "min": 0.001},
        "itl": {"kind": "normal", "mean": 0.02, "std": 0.03, "min": 0.001},
        "tokens_per_event": 2,
        "reasoning_tokens": 2,
        "seed": 7,
        "faults": [{"kind": "http_status", "every": 7, "status": 500}],
    }
    with SimProcess(SimConfig.model_validate(config)) as sim:
        yield sim


@pytest.fixture(scope="module")
def unit_run(
    faulty_sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[CollectorRegistry, BenchResult, Summary]:
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)
    out = tmp_path_factory.mktemp("unit")
    result = bench(faulty_sim.url, metrics, out, requests=70, warmup_requests=6)
    f = read_records(result.records_path)
    assert f.footer is not None
    window = (f.footer.window_start, f.footer.window_end)
    return registry, result, summarize(f.records, window=window), metrics


def test_every_bucket_count_equals_the_exact_share_of_samples(
    unit_run: Run,
) -> None:
    registry, result, summary, _ = unit_run
    samples = scrape(registry)
    records = read_records(result.records_path).records
    for h in HISTOGRAMS:
        if h.key not in (*LATENCY_KEYS, "queue_delay"):
            continue
        # The exact count at or under each boundary, from latbench's own summary: an SLO at that
        # threshold reports the share of samples at or under it.
        exact = summarize(records, slos=[Slo(h.key, 50.0, b) for b in h.buckets])
        count = exact.latency[h.key].count
        assert count > 0, h.key
        assert one(samples, f"{h.name}_count") == count
        assert one(samples, f"{h.name}_sum") == pytest.approx(
            exact.latency[h.key].mean * count, rel=1e-9
        )
        for slo_result, bound in zip(exact.slos, h.buckets, strict=True):
            at_or_under = round((slo_result.attainment or 0.0) * count)
            got = one(samples, f"{h.name}_bucket", le=_le(bound))
            assert got == at_or_under, (h.key, bound)
        assert one(samples, f"{h.name}_bucket", le="+Inf") == count
    # Queue delay is a latency like the others: the succeeded requests, as the summary's.
    assert summary.requests.failed > 0
    assert one(samples, "latbench_queue_delay_seconds_count") == summary.requests.succeeded


def _le(bound: float) -> str:
    return floatToGoString(bound)


def test_counters_equal_the_summary(unit_run: Run) -> None:
    registry, result, summary, _ = unit_run
    samples = scrape(registry)
    req = summary.requests
    assert req.failed > 0 and req.warmup == 6
    assert one(samples, "latbench_requests_total", outcome="ok") == req.succeeded
    assert one(samples, "latbench_requests_total", outcome="error") == req.failed
    by_kind = series_of(samples, "latbench_errors_total").items()
    errors = {dict(lab)["kind"]: v for lab, v in by_kind}
    assert {k: v for k, v in errors.items() if v} == dict(req.errors_by_kind)
    assert one(samples, "latbench_excluded_requests_total", phase="warmup") == req.warmup
    assert one(samples, "latbench_output_tokens_total") == summary.tokens.output_total
    assert one(samples, "latbench_prompt_tokens_total") == summary.tokens.prompt_total
    assert one(samples, "latbench_good_requests_total") == summary.rates.good
    assert 0 < summary.rates.good < req.succeeded  # some requests missed an SLO, some met all
    # Every loop-lag sample of the run, live from the runner's own monitor: warm-up included,
    # where the summary's verdict keeps those of the measurement window only.
    footer = read_records(result.records_path).footer
    assert footer is not None
    lag_count = one(samples, "latbench_event_loop_lag_seconds_count")
    assert lag_count >= len(footer.validity["loop_lag_ns"]) > 0
    assert one(samples, "latbench_client_cpu_seconds_total") > 0
    assert one(samples, "latbench_inflight_requests") == 0
    assert one(samples, "latbench_run_active") == 0
    assert abs(one(samples, "latbench_run_start_time_seconds") - time.time()) < 600


def test_labels_are_the_five_bounded_ones(unit_run: Run) -> None:
    registry, _, _, _ = unit_run
    extra = {"le", "outcome", "kind", "phase", "match"}
    for _, labels in scrape(registry):
        names = {k for k, _ in labels} - extra
        assert names == {"target", "model", "api", "scenario", "location"}
        d = dict(labels)
        assert d["model"] == "sim-unit" and d["scenario"] == "unit" and d["api"] == "chat"
        assert d["location"] == "local"  # sent by this process's own workers


def test_per_record_samples_equal_the_summary_of_that_record(
    unit_run: Run,
) -> None:
    _, result, _, _ = unit_run
    records = [r for r in read_records(result.records_path).records if r.ok]
    records = [r for r in records if r.phase == "measure"]
    assert len(records) > 20
    for r in records[:20]:
        mine = record_samples(r)
        theirs = summarize([r])
        for key in ("ttft", "ttfo", "tpot", "e2e", "queue_delay"):
            s = theirs.latency[key]
            assert mine.per_request[key] == (s.mean if s.count else None), key  # bit for bit
        for key, gaps in (("itl", mine.itl), ("itl_per_token", mine.itl_per_token)):
            s = theirs.latency[key]
            assert len(gaps) == s.count
            if s.count:
                assert (float(gaps.min()), float(gaps.max())) == (s.min, s.max)
        assert mine.n_out == theirs.tokens.output_total


def test_the_served_text_has_the_same_samples_as_prometheus_clients_writer(
    unit_run: Run,
) -> None:
    # /metrics is written by exporter.exposition.render_text (10x cheaper); pushes and any other
    # reader of the registry get prometheus_client's generate_latest. Both must agree.
    registry, _, _, metrics = unit_run
    assert parse(render_text(metrics)) == scrape(registry)


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")
@pytest.mark.parametrize("writer", ["render_text", "generate_latest"])
def test_promtool_check_metrics_accepts_the_exposition(unit_run: Run, writer: str) -> None:
    registry, _, _, metrics = unit_run
    assert PROMTOOL is not None
    body = render_text(metrics) if writer == "render_text" else generate_latest(registry)
    p = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    assert not p.stdout.strip() and not p.stderr.strip(), (p.stdout + p.stderr).decode()


def test_series_count_stays_fixed_however_many_runs(faulty_sim: SimProcess, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)
    bench(faulty_sim.url, metrics, tmp_path, requests=8, name="same")
    first = scrape(registry)
    bench(faulty_sim.url, metrics, tmp_path, requests=8, name="same")
    second = scrape(registry)
    assert set(first) == set(second)  # same series; only their values grew
    finished = sum(series_of(second, "latbench_requests_total").values())
    finished += sum(series_of(second, "latbench_excluded_requests_total").values())
    assert finished == 16  # every request of both runs, measured or warm-up
    bench(faulty_sim.url, metrics, tmp_path, requests=8, name="other")
    third = scrape(registry)
    per_scenario = len(first)
    assert len(third) == 2 * per_scenario  # a new scenario adds exactly one label set's series


# ---------------------------------------------------------------------------------------------
# `latbench run --metrics-port/--metrics-linger/--pushgateway`, as a user runs it


@pytest.fixture
def fast_sim(sim: Callable[..., SimProcess]) -> SimProcess:
    return sim(model="sim-cli", ttft=0.03, itl=0.01)


def summary_of(out: Path) -> Summary:
    (records,) = out.glob("*/records.jsonl")
    f = read_records(records)
    assert f.footer is not None
    return summarize(f.records, window=(f.footer.window_start, f.footer.window_end))


def test_metrics_port_serves_during_the_run_and_lingers_for_a_final_scrape(
    fast_sim: SimProcess, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = spawn(
        "run", "--target", fast_sim.url, "--name", "cli", "--concurrency", "2", "--requests", "40",
        "--output-tokens", "8", "--metrics-port", str(port), "--metrics-linger", "60",
        "--out", str(tmp_path), "--json",
    )  # fmt: skip
    try:

        def live_value() -> dict[Any, float] | None:
            s = parse(http_get(url))
            done = sum(series_of(s, "latbench_requests_total").values())
            active = one(s, "latbench_run_active") if series_of(s, "latbench_run_active") else 0
            return s if active == 1 and 0 < done < 40 else None

        # Observed while the run is still going: values arrive as requests finish.
        live = wait_for(live_value, 60, "a scrape showing the run in progress", interval=0.05)
        assert one(live, "latbench_ttft_seconds_count") >= 1

        # After the run the process keeps serving (60 s linger) until a scrape reads the end...
        def finished() -> dict[Any, float] | None:
            s = parse(http_get(url))
            return s if one(s, "latbench_run_active") == 0 else None

        final = wait_for(finished, 60, "the run to end")
        # ... and once that scrape has been answered it exits at once, not 60 s later.
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 15, err
        assert "until a scrape reads the final" in err
    finally:
        stop_pid(proc)
    summary = summary_of(tmp_path)
    assert one(final, "latbench_requests_total", outcome="ok") == summary.requests.succeeded
    assert summary.requests.measured + summary.requests.warmup == 40
    assert one(final, "latbench_ttft_seconds_count") == summary.latency["ttft"].count
    assert one(final, "latbench_inflight_requests") == 0


def parse(text: bytes) -> Samples:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_a_scrape_just_after_the_end_ends_the_linger(
    faulty_sim: SimProcess, tmp_path: Path
) -> None:
    # The scrape may come between the run's end and the CLI's turn to linger (while it writes the
    # summary): it has read the final values, so the linger must not wait for another one.
    export = MetricsExport(("127.0.0.1", 0), None, linger_s=30)
    try:
        assert export.server is not None
        bench(faulty_sim.url, export.metrics, tmp_path, requests=6)
        final = parse(http_get(export.server.url))
        assert one(final, "latbench_run_active") == 0
        assert export.run_ended() is None
        t0 = time.monotonic()
        assert export.linger() is True
        assert time.monotonic() - t0 < 1
    finally:
        export.close()


def test_linger_gives_up_after_its_limit_without_a_scrape(
    fast_sim: SimProcess, tmp_path: Path
) -> None:
    proc = spawn(
        "run", "--target", fast_sim.url, "--requests", "4", "--output-tokens", "4",
        "--metrics-port", "0", "--metrics-linger", "1.5", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop_pid(proc)
    assert proc.returncode in (0, 4), err  # 4: client-bound on a busy machine is still a run
    assert "at most 1.5 s" in err


def test_a_port_in_use_is_a_clear_error(fast_sim: SimProcess, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = latbench(
            "run", "--target", fast_sim.url, "--requests", "2", "--metrics-port", str(port),
            "--out", str(tmp_path), timeout=60,
        )  # fmt: skip
    assert p.returncode == 1
    assert "cannot serve metrics" in p.stderr


def test_bad_metrics_flags_are_usage_errors(tmp_path: Path) -> None:
    for args in (["--metrics-port", "nope"], ["--metrics-port", "1", "--metrics-linger", "-1"]):
        p = latbench("run", "--requests", "1", "--out", str(tmp_path), *args, timeout=60)
        assert p.returncode == 2, p.stderr


PUSHGATEWAY_MISSING = shutil.which("prometheus-pushgateway") is None


@pytest.mark.skipif(
    PUSHGATEWAY_MISSING, reason="needs Debian's prometheus-pushgateway (.ci/run installs it)"
)
def test_pushgateway_gets_the_final_values_under_the_documented_group(
    fast_sim: SimProcess, tmp_path: Path
) -> None:
    gw = Pushgateway(tmp_path / "gw")
    try:
        proc = spawn(
            "run", "--target", fast_sim.url, "--name", "pushed", "--concurrency", "2",
            "--requests", "12", "--output-tokens", "8", "--pushgateway", gw.url,
            "--out", str(tmp_path / "out"), "--json",
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            stop_pid(proc)
        assert proc.returncode in (0, 4), err
        (group,) = gw.groups()
        summary = summary_of(tmp_path / "out")
    finally:
        gw.stop()
    key = grouping_key(_labels(target=fast_sim.url, model="sim-cli", api="chat", scenario="pushed"))
    assert group["labels"] == {"job": "latbench", **key}
    requests = group["latbench_requests_total"]["metrics"]
    ok = [m for m in requests if m["labels"]["outcome"] == "ok"]
    assert float(ok[0]["value"]) == summary.requests.succeeded == 12
    active = group["latbench_run_active"]["metrics"][0]
    assert float(active["value"]) == 0  # the last push came after the end


def _labels(**kw: str) -> RunLabels:
    return RunLabels(**kw)


def test_a_failed_final_push_makes_a_good_run_exit_1(fast_sim: SimProcess, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = latbench(
        "run", "--target", fast_sim.url, "--requests", "3", "--output-tokens", "4",
        "--pushgateway", dead, "--out", str(tmp_path), "--json", timeout=120,
    )  # fmt: skip
    assert "push to" in p.stderr and "failed" in p.stderr
    summary = json.loads(p.stdout)
    if not summary["client_bound"]:
        assert p.returncode == 1
    else:
        assert p.returncode == 4  # a worse verdict is kept
