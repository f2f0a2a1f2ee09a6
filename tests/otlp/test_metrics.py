"""OTLP metrics out, as one more exposition of the exporter's state: one run against a tracing
simulator with a fake GPU, its `LatbenchMetrics` served as Prometheus text and sent over OTLP/HTTP
to two real collectors on 127.0.0.1 (tests/kit/otlp.py, which decodes each export with
opentelemetry-proto), one cumulative and one delta. Every histogram must arrive with exactly
latbench's bucket boundaries and the Prometheus series' counts and sums, every counter and gauge
with its value, under the GenAI semantic-convention names and attributes; the deltas must add up
to the run; a dead, refusing or slow collector must only warn.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kit.cli import latbench
from kit.otlp import Attrs, OtlpCollector, attrs_of
from kit.service import running
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from rich.console import Console

from latbench.cli.common import Exit
from latbench.exporter import (
    HISTOGRAMS,
    LatbenchMetrics,
    MetricsExport,
    OtlpError,
    otlp_config,
    render_text,
)
from latbench.exporter.otlp import (
    COUNTER_DEFS,
    GAUGE_DEFS,
    HISTOGRAM_DEFS,
    OPERATION_DURATION,
    SCALAR_NAMES,
    SCHEMA_URL,
    TIME_PER_OUTPUT_CHUNK,
    TIME_TO_FIRST_CHUNK,
    OtlpPusher,
    otel_name,
    run_attributes,
)
from latbench.exporter.otlp_config import parse_endpoint, parse_headers
from latbench.exporter.series import SCALARS, RunLabels
from latbench.records import read_records
from latbench.run import BenchResult, run_benchmark
from latbench.service.config import ServiceConfig
from latbench.sim import SimConfig, SimProcess
from latbench.spec import load_spec
from latbench.vllm.launch import free_port

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA

# The attributes every data point of the unit run carries: the run's labels, as the semantic
# conventions (v1.41.0, gen-ai-metrics.md) and latbench.* name them.
RUN_ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "sim-otlp",
    "latbench.target": "builtin-sim",
    "latbench.api": "chat",
    "latbench.scenario": "otlp",
    "latbench.location": "local",
}
ALL_DEFS = {d.name: d for d in (*HISTOGRAM_DEFS, *(d for _, d in (*COUNTER_DEFS, *GAUGE_DEFS)))}


@dataclass
class Run:
    metrics: LatbenchMetrics
    cumulative: OtlpCollector
    delta: OtlpCollector
    result: BenchResult
    warnings: list[str]
    prometheus: dict[tuple[str, frozenset[tuple[str, str]]], float]  # the text, parsed


@pytest.fixture(scope="module")
def unit_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run, exported three ways from one state. The simulator spreads TTFT, writes reasoning
    tokens and two tokens per event, fails every 7th request with an HTTP 500, exports a span of
    every request to the run's receiver and serves a fake GPU's DCGM page, so every histogram,
    counter and gauge has something in it. The spec names no target (the built-in simulator's
    labels: no server.* attributes); the runner is pointed at this simulator."""
    span_port = free_port()
    config = {
        "model": "sim-otlp",
        "ttft": {"kind": "normal", "mean": 0.04, "std": 0.02, "min": 0.001},
        "itl": {"kind": "normal", "mean": 0.005, "std": 0.005, "min": 0.0005},
        "tokens_per_event": 2,
        "reasoning_tokens": 2,
        "seed": 11,
        "faults": [{"kind": "http_status", "every": 7, "status": 500}],
        "otlp_traces_endpoint": f"http://127.0.0.1:{span_port}/v1/traces",
        "span_delay_s": 0.05,
        "gpu": {"count": 1, "idle_w": 50.0, "j_per_token": 0.2},
    }
    with SimProcess(SimConfig.model_validate(config)) as sim, OtlpCollector() as cum:
        spec = load_spec(
            {
                "name": "otlp",
                "target": {
                    "api": "chat",
                    "otlp_receiver": f"127.0.0.1:{span_port}",
                    "gpu_metrics": f"{sim.url}/dcgm/metrics",
                },
                "workload": {"input_tokens": 16, "output_tokens": 9},
                "load": {"concurrency": 4, "requests": 60, "warmup_requests": 5},
                "slos": ["ttft:p99<=50ms"],
                "output_dir": str(tmp_path_factory.mktemp("otlp")),
            }
        )
        with OtlpCollector() as delta:
            # The CLI's path for the cumulative collector; a second pusher on the same state
            # for the delta one. Short intervals: exports during the run, not only its ends.
            export = MetricsExport(None, None, otlp=otlp_config(cum.url, interval_s=0.2))
            assert export.otlp is not None
            delta_pusher = OtlpPusher(
                export.metrics, otlp_config(delta.url, interval_s=0.3, temporality="delta")
            )

            def started(labels: RunLabels) -> None:
                export.run_started(labels)
                delta_pusher.start()

            try:
                result = asyncio.run(
                    run_benchmark(
                        spec, sim.url, Console(file=io.StringIO()),
                        metrics=export.metrics, on_labels=started,
                    )
                )  # fmt: skip
                assert export.run_ended() is None
                delta_pusher.finish()
            finally:
                export.close()
                delta_pusher.stop()
            prometheus = {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(render_text(export.metrics).decode())
                for s in family.samples
            }
            yield Run(
                export.metrics,
                cum,
                delta,
                result,
                export.otlp_warnings + delta_pusher.warnings,
                prometheus,
            )


def with_run(attrs: Attrs, **extra: Any) -> bool:
    return dict(attrs) == {**RUN_ATTRS, **extra}


def prom_labels(**extra: str) -> frozenset[tuple[str, str]]:
    base = {"target": "builtin-sim", "model": "sim-otlp", "api": "chat", "scenario": "otlp",
            "location": "local"}  # fmt: skip
    return frozenset({**base, **extra}.items())


def test_every_histogram_is_the_prometheus_one(unit_run: Run) -> None:
    assert unit_run.warnings == []
    prom = unit_run.prometheus
    for h in HISTOGRAMS:
        (attrs, p), *others = unit_run.cumulative.histograms(otel_name(h.key)).items()
        assert others == [] and with_run(attrs), h.key
        assert p.bounds == h.buckets, h.key  # exactly, boundary for boundary
        assert p.unit == "s" and p.temporality == CUMULATIVE
        assert len(p.counts) == len(h.buckets) + 1  # per bucket, +Inf last
        les = [*(str(b) for b in h.buckets), "+Inf"]
        # The Prometheus text's le="..." is floatToGoString's; compare as numbers.
        expected = {
            float(dict(k)["le"]): v for (name, k), v in prom.items() if name == f"{h.name}_bucket"
        }
        assert len(expected) == len(les)
        cumulative = np.cumsum(p.counts).tolist()
        assert cumulative == [expected[float(le)] for le in les], h.key
        assert p.count == prom[(f"{h.name}_count", prom_labels())]
        assert p.sum == pytest.approx(prom[(f"{h.name}_sum", prom_labels())], rel=1e-12)
    # The run had something in each histogram it can fill against the tracing simulator.
    for key in ("ttft", "ttfo", "itl", "itl_per_token", "tpot", "e2e", "queue_delay"):
        assert unit_run.cumulative.histograms(otel_name(key)), key
    for key in ("ttft", "e2e", "itl", "server_ttft", "outside_ttft", "server_queue"):
        (p,) = unit_run.cumulative.histograms(otel_name(key)).values()
        assert p.count > 0, key


def test_every_counter_and_gauge_is_the_prometheus_one(unit_run: Run) -> None:
    prom = unit_run.prometheus
    s = unit_run.metrics.all_series()[0]
    for f, d in (*COUNTER_DEFS, *GAUGE_DEFS):
        got = (
            unit_run.cumulative.sums(d.name)
            if f.type == "counter"
            else unit_run.cumulative.gauges(d.name)
        )
        values = f.values(s)
        assert len(got) == len(values), d.name
        for extra, value in values:
            labels = prom_labels(**({f.extra: extra} if f.extra else {}))
            assert prom[(f.sample, labels)] == value
            want = {**RUN_ATTRS, **({d.attribute: extra} if d.attribute else {})}
            (point,) = [v for a, v in got.items() if dict(a) == want]
            assert point.value == value, (d.name, extra)
            assert point.unit == d.unit
            if f.type == "counter":
                assert point.monotonic and point.temporality == CUMULATIVE
    # What the run put in them, so the equalities above are not of zeros.
    sums = unit_run.cumulative.sums
    requests = {dict(a)["latbench.outcome"]: v.value for a, v in sums("latbench.requests").items()}
    assert requests["ok"] > 0 and requests["error"] > 0
    errors = {dict(a)["error.type"]: v.value for a, v in sums("latbench.errors").items()}
    assert sum(errors.values()) == requests["error"]
    phases = {
        dict(a)["latbench.phase"]: v.value for a, v in sums("latbench.excluded_requests").items()
    }
    assert phases["warmup"] == 5
    matches = {dict(a)["latbench.span.match"]: v.value for a, v in sums("latbench.spans").items()}
    assert matches["matched"] > 0
    (energy,) = sums("latbench.energy").values()
    assert energy.value > 0 and energy.unit == "J"
    (power,) = unit_run.cumulative.gauges("latbench.gpu.power").values()
    assert power.value > 0 and power.unit == "W"
    (tokens,) = sums("latbench.output_tokens").values()
    assert tokens.value == s.output_tokens > 0


def test_gauges_during_the_run_and_cumulative_start_times(unit_run: Run) -> None:
    """Exports every interval while the run goes: run_active is 1 then, 0 at the end; every
    cumulative point counts from the run's start, whichever export it is in."""
    c = unit_run.cumulative
    active = [p.as_int for _, _, m in c.history("latbench.run_active") for p in m.gauge.data_points]
    assert len(active) >= 3  # the start, at least one interval, the end
    assert 1 in active and active[-1] == 0
    (start_gauge,) = c.gauges("latbench.run_start_time").values()
    starts = {
        p.start_time_unix_nano
        for name in (TIME_TO_FIRST_CHUNK, "latbench.requests")
        for _, _, m in c.history(name)
        for p in (m.histogram.data_points if m.HasField("histogram") else m.sum.data_points)
    }
    (start,) = starts
    assert start == int(start_gauge.value * 1e9)
    last = max(
        p.time_unix_nano
        for _, _, m in c.history(TIME_TO_FIRST_CHUNK)
        for p in m.histogram.data_points
    )
    assert start < last


def test_the_deltas_add_up_to_the_run(unit_run: Run) -> None:
    cum, delta = unit_run.cumulative, unit_run.delta
    assert len(delta.received()) >= 3
    for name, d in ALL_DEFS.items():
        kind = (
            "histogram" if d.buckets else "sum" if any(d is x for _, x in COUNTER_DEFS) else "gauge"
        )
        if kind == "gauge":
            continue
        totals: dict[Attrs, Any] = defaultdict(lambda: 0)
        ends: dict[Attrs, int] = {}
        for _, _, m in delta.history(name):
            assert m.WhichOneof("data") == kind
            data = getattr(m, kind)
            assert data.aggregation_temporality == DELTA
            for p in data.data_points:
                a = attrs_of(p.attributes)
                # Each interval starts where the previous accepted one ended.
                if a in ends:
                    assert p.start_time_unix_nano == ends[a], name
                ends[a] = p.time_unix_nano
                if kind == "histogram":
                    totals[a] = totals[a] + np.asarray(p.bucket_counts)
                else:
                    totals[a] += p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
        final = cum.histograms(name) if kind == "histogram" else cum.sums(name)
        assert set(totals) == set(final), name
        for a, total in totals.items():
            if kind == "histogram":
                assert total.tolist() == list(final[a].counts), name
            else:
                assert total == pytest.approx(final[a].value, rel=1e-9), name


def test_semantic_convention_names_units_and_attributes(unit_run: Run) -> None:
    c = unit_run.cumulative
    names = c.names()
    assert {OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TIME_PER_OUTPUT_CHUNK} <= names
    assert names == set(ALL_DEFS)  # everything, the GPU's gauges included
    assert {n for n in names if not n.startswith("gen_ai.")} == {
        n for n in names if n.startswith("latbench.")
    }
    for res, scope, m in c.metrics():
        assert dict(res)["service.name"] == "latbench" and dict(res)["service.version"]
        assert dict(scope)["name"] == "latbench" and dict(scope)["schema_url"] == SCHEMA_URL
        d = ALL_DEFS[m.name]
        assert m.unit == d.unit and m.description
        points = getattr(m, m.WhichOneof("data")).data_points
        for p in points:
            keys = {kv.key for kv in p.attributes}
            # Bounded: the run's attributes plus at most the series' one extra label.
            assert keys - set(RUN_ATTRS) <= ({d.attribute} if d.attribute else set()), m.name
            assert set(RUN_ATTRS) <= keys
    # Every series of exporter/series.py has a name chosen for it (none by the fallback).
    assert set(SCALAR_NAMES) == {f.name for f in SCALARS}
    (gpu,) = c.gauges("latbench.gpu.utilization")
    assert "hw.id" in dict(gpu)


def test_results_do_not_depend_on_the_export(unit_run: Run) -> None:
    f = read_records(unit_run.result.records_path)
    assert f.footer is not None and len(f.records) == 60  # warm-up included
    results = json.loads(unit_run.result.results_path.read_text())
    assert results["summary"]["requests"]["succeeded"] > 0


# ---------------------------------------------------------------------------------------------
# Pieces, against a real collector and a state filled as the Prometheus sink fills it


LABELS = RunLabels("http://gpu-1:8000", "m", "chat", "s")


def observe(metrics: LatbenchMetrics, ttfts: list[float]) -> None:
    s = metrics.series(LABELS)
    for v in ttfts:
        s.hist["ttft"].observe(v)
        s.requests["ok"] += 1


def ok_points(c: OtlpCollector) -> list[Any]:
    return [
        p
        for _, _, m in c.history("latbench.requests")
        for p in m.sum.data_points
        if ("latbench.outcome", "ok") in attrs_of(p.attributes)
    ]


def test_delta_keeps_what_a_refused_export_held_for_the_next() -> None:
    metrics = LatbenchMetrics()
    with OtlpCollector() as c:
        pusher = OtlpPusher(metrics, otlp_config(c.url, temporality="delta"))
        observe(metrics, [0.01, 0.2])
        assert pusher.export()
        c.status = 503
        observe(metrics, [0.05])
        assert not pusher.export()  # the collector is down: its share waits
        c.status = 200
        observe(metrics, [3.0])
        assert pusher.export()
        points = [p for _, _, m in c.history(TIME_TO_FIRST_CHUNK) for p in m.histogram.data_points]
        assert [p.count for p in points] == [2, 2]
        assert sum(p.sum for p in points) == pytest.approx(3.26)
        assert points[1].start_time_unix_nano == points[0].time_unix_nano
        ok = [v for a, v in c.sums("latbench.requests").items() if ("latbench.outcome", "ok") in a]
        assert ok[0].temporality == DELTA
        assert sum(p.as_int for p in ok_points(c)) == 4
    (warning,) = pusher.warnings
    assert "1 of 3" in warning and "HTTP 503" in warning


def test_the_service_logs_a_failing_collector_once_and_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = LatbenchMetrics()
    observe(metrics, [0.1])
    log = logging.getLogger("latbench.service")
    with OtlpCollector(status=503) as c, caplog.at_level(logging.INFO, "latbench.service"):
        pusher = OtlpPusher(metrics, otlp_config(c.url), log=log)
        for _ in range(3):
            assert not pusher.export()
        c.status = 200
        assert pusher.export() and pusher.export()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "WARNING" and "HTTP 503" in lines[0][1]
    assert lines[1] == ("INFO", f"OTLP metric export to {c.url}/v1/metrics works again")
    assert c.refused == 3


def test_server_attributes_from_the_target_label() -> None:
    attrs = run_attributes(RunLabels("http://gpu-1:8000", "m", "completions", "s"))
    assert attrs["server.address"] == "gpu-1" and attrs["server.port"] == 8000
    assert attrs["gen_ai.operation.name"] == "text_completion"
    https = run_attributes(RunLabels("https://api.x/v1", "m", "anthropic", "s"))
    assert https["server.port"] == 443 and https["gen_ai.provider.name"] == "anthropic"
    # The service's catalogue name, and the built-in simulator: no server.*
    for target in ("sim", "builtin-sim"):
        assert "server.address" not in run_attributes(RunLabels(target, "m", "chat", "s"))


def test_a_partial_success_and_a_slow_collector_are_warnings() -> None:
    metrics = LatbenchMetrics()
    observe(metrics, [0.1])
    with OtlpCollector(reject=3) as c:
        pusher = OtlpPusher(metrics, otlp_config(c.url))
        assert pusher.export()
    (warning,) = pusher.warnings
    assert "rejected 3 data points: the test collector drops these" in warning
    with OtlpCollector(delay_s=3.0) as slow:
        pusher = OtlpPusher(metrics, otlp_config(slow.url, timeout_s=0.3))
        t0 = time.monotonic()
        assert not pusher.export()
        assert time.monotonic() - t0 < 2.0  # the timeout, not the collector, ended it
    (warning,) = pusher.warnings
    assert "timed out" in warning


def test_settings_parsing(tmp_path: Path) -> None:
    assert parse_endpoint("http://c:4318") == "http://c:4318/v1/metrics"
    assert parse_endpoint("http://c:4318/") == "http://c:4318/v1/metrics"
    assert parse_endpoint("https://c/otlp/v1/metrics") == "https://c/otlp/v1/metrics"
    for bad in ("c:4318", "ftp://c/v1/metrics", "http:///v1/metrics", "http://c:99999"):
        with pytest.raises(OtlpError):
            parse_endpoint(bad)
    token = tmp_path / "token"
    token.write_text("Bearer s3cret\n")
    assert parse_headers(["X-Org = a", f"Authorization=@{token}"]) == {
        "X-Org": "a",
        "Authorization": "Bearer s3cret",
    }
    with pytest.raises(OtlpError, match="NAME=VALUE"):
        parse_headers(["no-equals"])
    # The OTEL_ environment, under the flags: headers percent-decoded, the metrics' own
    # variable over the general one; the temporality preference.
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%20y",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "b=2",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "LowMemory",
    }
    config = otlp_config("http://c:4318", ["a=flag"], environ=env)
    assert dict(config.headers) == {"a": "flag", "b": "2"}
    assert config.temporality == "delta"
    assert otlp_config("http://c", temporality="cumulative", environ=env).temporality == (
        "cumulative"
    )
    with pytest.raises(OtlpError, match="TEMPORALITY_PREFERENCE"):
        otlp_config("http://c", environ={"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "x"})
    with pytest.raises(OtlpError, match="more than 0"):
        otlp_config("http://c", timeout_s=0, environ={})


# ---------------------------------------------------------------------------------------------
# `latbench run --otlp-metrics`, as a user runs it


@pytest.fixture
def fast_sim(sim: Callable[..., SimProcess]) -> SimProcess:
    return sim(model="sim-cli", ttft=0.03, itl=0.01)


def test_cli_exports_with_headers_and_the_targets_server_attributes(
    fast_sim: SimProcess, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("Bearer t0ken\n")
    with OtlpCollector() as c:
        p = latbench(
            "run", "--target", fast_sim.url, "--requests", "8", "--out", str(tmp_path),
            "--otlp-metrics", c.url, "--otlp-header", f"Authorization=@{token}",
            "--otlp-temporality", "delta", timeout=120,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "otlp" not in p.stderr
        assert c.headers and all(h.get("Authorization") == "Bearer t0ken" for h in c.headers)
        assert all(h.get("Content-Type") == "application/x-protobuf" for h in c.headers)
        # Delta: the requests are split over the exports, and add up to the run's.
        points = [p for _, _, m in c.history(TIME_TO_FIRST_CHUNK) for p in m.histogram.data_points]
        assert len(points) >= 2 and sum(pt.count for pt in points) == 8
        (attrs,) = c.histograms(TIME_TO_FIRST_CHUNK)
        port = int(fast_sim.url.rsplit(":", 1)[1].split("/")[0])
        assert dict(attrs)["server.address"] == "127.0.0.1"
        assert dict(attrs)["server.port"] == port
        assert c.histograms(TIME_TO_FIRST_CHUNK)[attrs].temporality == DELTA


@pytest.mark.parametrize("status", [None, 401])
def test_a_dead_or_refusing_collector_only_warns(
    fast_sim: SimProcess, tmp_path: Path, status: int | None
) -> None:
    with OtlpCollector(status=status or 200) as c:
        url = c.url
        if status is not None:
            p = latbench(
                "run", "--target", fast_sim.url, "--requests", "4", "--out", str(tmp_path),
                "--otlp-metrics", url, timeout=120,
            )  # fmt: skip
    if status is None:  # the collector is gone: nothing listens on its port now
        p = latbench(
            "run", "--target", fast_sim.url, "--requests", "4", "--out", str(tmp_path),
            "--otlp-metrics", url, timeout=120,
        )  # fmt: skip
    # The run's own verdict, not an error (1): a loaded machine may find 4 requests
    # client-bound (4), which is about the measurement, not the collector.
    assert p.returncode in (Exit.OK, Exit.CLIENT_BOUND), p.stderr
    assert "otlp:" in p.stderr and "failed" in p.stderr
    assert "Traceback" not in p.stderr
    # One line, naming the cause.
    assert p.stderr.count("otlp:") == 1
    assert ("Connection refused" if status is None else "HTTP 401") in p.stderr
    (records,) = tmp_path.glob("*/records.jsonl")
    assert len(read_records(records).records) == 4
    (results,) = tmp_path.glob("*/results.json")
    assert json.loads(results.read_text())["summary"]["requests"]["succeeded"] == 4


def test_bad_otlp_flags_are_usage_errors(tmp_path: Path) -> None:
    for args, says, env in (
        (["--otlp-metrics", "collector:4318"], "http(s) URL", {}),
        (["--otlp-metrics", "http://c:4318", "--otlp-header", "x"], "NAME=VALUE", {}),
        (["--otlp-header", "a=b"], "go with --otlp-metrics", {}),
        (["--otlp-metrics", "http://c:4318", "--otlp-interval", "0"], "more than 0", {}),
        (
            ["--otlp-metrics", "http://c:4318"],
            "TEMPORALITY_PREFERENCE",
            {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"},
        ),
    ):
        p = latbench("run", "--requests", "1", "--out", str(tmp_path), *args, timeout=60, env=env)
        assert p.returncode == 2, (args, p.stderr)
        assert says in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------------------
# `latbench serve` with `otlp_metrics`: its long-lived state goes out every interval


def test_the_service_exports_its_runs_over_otlp(fast_sim: SimProcess, tmp_path: Path) -> None:
    with OtlpCollector() as c:
        over = {"otlp_metrics": {"endpoint": c.url, "interval": 0.5}}
        with running(fast_sim.url, tmp_path, **over) as svc:
            run = svc.submit({"target": "sim", "load": {"concurrency": 2, "requests": 6}})
            done = svc.wait_state(run["id"], "completed", "failed")
            assert done["state"] == "completed", done

            def six(c: OtlpCollector) -> bool:
                points = c.histograms(TIME_TO_FIRST_CHUNK)
                return any(p.count == 6 for p in points.values())

            c.wait(six)
        (attrs,) = c.histograms(TIME_TO_FIRST_CHUNK)
        # The service's labels: its catalogue name as the target, the run's spec name.
        assert dict(attrs)["latbench.target"] == "sim"
        assert dict(attrs)["gen_ai.request.model"] == "sim-cli"
        assert "server.address" not in dict(attrs)


def test_service_config_checks_the_otlp_settings(tmp_path: Path) -> None:
    config = ServiceConfig.model_validate({"otlp_metrics": {"endpoint": "http://c:4318"}})
    assert config.otlp_metrics is not None
    assert config.otlp_metrics.endpoint == "http://c:4318/v1/metrics"
    built = config.otlp_metrics.build()
    assert built.interval_s == 30.0 and built.timeout_s == 5.0
    with pytest.raises(ValidationError, match="http"):
        ServiceConfig.model_validate({"otlp_metrics": {"endpoint": "c:4318"}})
    with pytest.raises(ValidationError, match="greater than 0"):
        ServiceConfig.model_validate({"otlp_metrics": {"endpoint": "http://c", "timeout": 0}})
