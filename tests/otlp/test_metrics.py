"""OTLP metrics out: one run against the simulator exported at once to Prometheus
(`LatbenchMetrics`) and over OTLP/HTTP to a real collector on 127.0.0.1 (tests/kit/otlp.py, which
decodes each export with opentelemetry-proto). Every histogram must arrive with exactly latbench's
bucket boundaries and the Prometheus series' counts and sums, under the GenAI semantic-convention
names and attributes; a dead or refusing collector must only warn.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kit.cli import latbench
from kit.otlp import Attrs, OtlpCollector
from kit.service import running
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from rich.console import Console

from latbench.cli.common import Exit
from latbench.exporter import HISTOGRAMS, LatbenchMetrics
from latbench.exporter.series import RunLabels
from latbench.otlp.metrics import (
    COUNTER_DEFS,
    HISTOGRAM_DEFS,
    OPERATION_DURATION,
    SCHEMA_URL,
    TIME_PER_OUTPUT_CHUNK,
    TIME_TO_FIRST_CHUNK,
    TOKEN_USAGE,
    TOKEN_USAGE_BUCKETS,
    OtlpError,
    OtlpMetrics,
    otel_name,
    parse_endpoint,
    parse_headers,
    run_attributes,
)
from latbench.records import read_records
from latbench.run import BenchResult, run_benchmark
from latbench.service.config import ServiceConfig
from latbench.sim import SimConfig, SimProcess
from latbench.spec import load_spec

# The attributes every data point of the unit run carries: the run's four labels, as the
# semantic conventions (v1.41.0, gen-ai-metrics.md) and latbench.* name them.
RUN_ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "sim-otlp",
    "latbench.target": "builtin-sim",
    "latbench.api": "chat",
    "latbench.scenario": "otlp",
}


@pytest.fixture(scope="module")
def faulty_sim() -> Iterator[SimProcess]:
    """Spread TTFT, reasoning tokens, two tokens per event, and an HTTP 500 every 7th request,
    so every histogram and counter has something in it."""
    config = {
        "model": "sim-otlp",
        "ttft": {"kind": "normal", "mean": 0.04, "std": 0.02, "min": 0.001},
        "itl": {"kind": "normal", "mean": 0.005, "std": 0.005, "min": 0.0005},
        "tokens_per_event": 2,
        "reasoning_tokens": 2,
        "seed": 11,
        "faults": [{"kind": "http_status", "every": 7, "status": 500}],
    }
    with SimProcess(SimConfig.model_validate(config)) as sim:
        yield sim


Run = tuple[LatbenchMetrics, OtlpCollector, BenchResult, list[str]]


@pytest.fixture(scope="module")
def unit_run(faulty_sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run, both exports. The spec names no target (the labels of the built-in simulator:
    no server.* attributes); the runner is pointed at the module's simulator."""
    spec = load_spec(
        {
            "name": "otlp",
            "target": {"api": "chat"},
            "workload": {"input_tokens": 16, "output_tokens": 9},
            "load": {"concurrency": 4, "requests": 60, "warmup_requests": 5},
            "slos": ["ttft:p99<=50ms"],
            "output_dir": str(tmp_path_factory.mktemp("otlp")),
        }
    )
    metrics = LatbenchMetrics(CollectorRegistry())
    with OtlpCollector() as collector:
        # A long interval: what arrives is the end-of-run flush and the shutdown's export.
        otlp = OtlpMetrics(collector.url, interval_s=600)
        console = Console(file=io.StringIO())
        result = asyncio.run(
            run_benchmark(spec, faulty_sim.url, console, metrics=metrics, otlp=otlp)
        )
        warnings = otlp.shutdown()
        yield metrics, collector, result, warnings


def the_series(metrics: LatbenchMetrics) -> Any:
    (s,) = metrics.all_series()
    return s


def with_run(attrs: Attrs, **extra: Any) -> bool:
    return dict(attrs) == {**RUN_ATTRS, **extra}


def test_every_histogram_has_our_buckets_and_the_prometheus_counts(unit_run: Run) -> None:
    metrics, collector, _, warnings = unit_run
    assert warnings == []
    s = the_series(metrics)
    for h in HISTOGRAMS:
        cumulative, total = s.hist[h.key].snapshot()
        points = collector.histograms(otel_name(h.key))
        ok = [p for a, p in points.items() if with_run(a)]
        if total == 0:
            assert ok == [], h.key
            continue
        (p,) = ok
        assert p.bounds == h.buckets, h.key  # exactly, boundary for boundary
        assert p.unit == "s"
        assert p.temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        assert list(np.cumsum(p.counts)) == [int(c) for c in cumulative], h.key
        assert p.count == cumulative[-1]
        assert p.sum == pytest.approx(total, rel=1e-12), h.key
    # The run had something in every histogram it can fill against the simulator.
    for key in ("ttft", "ttfo", "itl", "itl_per_token", "tpot", "e2e", "queue_delay"):
        assert s.hist[key].snapshot()[0][-1] > 0, key


def test_semantic_convention_names_units_and_attributes(unit_run: Run) -> None:
    _, collector, _, _ = unit_run
    names = collector.names()
    assert {OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TIME_PER_OUTPUT_CHUNK, TOKEN_USAGE} <= names
    assert names <= {d.name for d in (*HISTOGRAM_DEFS, *COUNTER_DEFS)}
    assert {n for n in names if not n.startswith("gen_ai.")} == {
        n for n in names if n.startswith("latbench.")
    }
    for res, scope, m in collector.metrics():
        assert dict(res)["service.name"] == "latbench"
        assert dict(scope)["name"] == "latbench" and dict(scope)["schema_url"] == SCHEMA_URL
        points = m.histogram.data_points if m.WhichOneof("data") == "histogram" else ()
        points = points or (m.sum.data_points if m.WhichOneof("data") == "sum" else ())
        for p in points:
            keys = {kv.key for kv in p.attributes}
            # Bounded: the run's attributes plus at most an error type, a token type or a phase.
            assert set(RUN_ATTRS) <= keys, m.name
            assert len(keys - set(RUN_ATTRS)) <= 1, (m.name, keys)
            assert not {"server.address", "server.port"} & keys  # the built-in simulator
    usage = collector.histograms(TOKEN_USAGE)
    for p in usage.values():
        assert p.bounds == TOKEN_USAGE_BUCKETS and p.unit == "{token}"


def test_tokens_requests_and_errors_equal_the_prometheus_counters(unit_run: Run) -> None:
    metrics, collector, _, _ = unit_run
    s = the_series(metrics)
    usage = collector.histograms(TOKEN_USAGE)
    out = [p for a, p in usage.items() if with_run(a, **{"gen_ai.token.type": "output"})]
    inp = [p for a, p in usage.items() if with_run(a, **{"gen_ai.token.type": "input"})]
    assert out[0].sum == s.output_tokens and out[0].count == s.requests["ok"]
    assert inp[0].sum == s.prompt_tokens > 0
    requests = collector.sums("latbench.requests")
    ok = [v for a, v in requests.items() if with_run(a)]
    assert ok[0].value == s.requests["ok"] and ok[0].monotonic and ok[0].unit == "{request}"
    failed = {dict(a)["error.type"]: v.value for a, v in requests.items() if not with_run(a)}
    assert failed == {k: v for k, v in s.errors.items() if v}
    assert sum(failed.values()) == s.requests["error"] > 0
    # A failed operation's duration, told apart by error.type, as the conventions ask; the
    # successful ones equal latbench_e2e_seconds (checked above).
    durations = collector.histograms(OPERATION_DURATION)
    for kind, n in failed.items():
        (p,) = [p for a, p in durations.items() if dict(a).get("error.type") == kind]
        assert p.count == n
    good = collector.sums("latbench.good_requests")
    assert [v.value for a, v in good.items() if with_run(a)] == [s.good]
    assert 0 < s.good < s.requests["ok"]
    excluded = collector.sums("latbench.excluded_requests")
    phases = {dict(a)["latbench.phase"]: v.value for a, v in excluded.items()}
    assert phases == {k: v for k, v in s.excluded.items() if v} == {"warmup": 5}


def test_results_do_not_depend_on_the_export(unit_run: Run) -> None:
    _, _, result, _ = unit_run
    f = read_records(result.records_path)
    assert f.footer is not None and len(f.records) == 60  # warm-up included
    assert json.loads(result.results_path.read_text())["summary"]["requests"]["succeeded"] > 0


# ---------------------------------------------------------------------------------------------
# Pieces


def test_server_attributes_from_the_target_url() -> None:
    labels = RunLabels("http://gpu-1:8000", "m", "completions", "s")
    attrs = run_attributes(labels, "http://gpu-1:8000")
    assert attrs["server.address"] == "gpu-1" and attrs["server.port"] == 8000
    assert attrs["gen_ai.operation.name"] == "text_completion"
    https = run_attributes(RunLabels("https://api.x", "m", "anthropic", "s"), "https://api.x/v1")
    assert https["server.port"] == 443 and https["gen_ai.provider.name"] == "anthropic"


def test_endpoint_and_headers_parsing(tmp_path: Path) -> None:
    assert parse_endpoint("http://c:4318") == "http://c:4318/v1/metrics"
    assert parse_endpoint("http://c:4318/") == "http://c:4318/v1/metrics"
    assert parse_endpoint("https://c/otlp/v1/metrics") == "https://c/otlp/v1/metrics"
    for bad in ("c:4318", "ftp://c/v1/metrics", "http:///v1/metrics"):
        with pytest.raises(OtlpError, match="http"):
            parse_endpoint(bad)
    token = tmp_path / "token"
    token.write_text("Bearer s3cret\n")
    assert parse_headers(["X-Org = a", f"Authorization=@{token}"]) == {
        "X-Org": "a",
        "Authorization": "Bearer s3cret",
    }
    with pytest.raises(OtlpError, match="NAME=VALUE"):
        parse_headers(["no-equals"])


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
        # Delta: the requests are split over the exports, and add up to the run's.
        ttfc = [
            pt
            for req in c.received()
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == TIME_TO_FIRST_CHUNK
            for pt in m.histogram.data_points
        ]
        assert sum(pt.count for pt in ttfc) == 8
        (attrs,) = c.histograms(TIME_TO_FIRST_CHUNK)
        port = int(fast_sim.url.rsplit(":", 1)[1].split("/")[0])
        assert dict(attrs)["server.address"] == "127.0.0.1"
        assert dict(attrs)["server.port"] == port
        assert c.histograms(TIME_TO_FIRST_CHUNK)[attrs].temporality == (
            AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        )


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
    # One line, naming the cause; the SDK's own log lines are kept out.
    assert p.stderr.count("otlp:") == 1
    assert "due to timeout" not in p.stderr and "retrying" not in p.stderr
    assert ("Connection refused" if status is None else "401") in p.stderr
    (records,) = tmp_path.glob("*/records.jsonl")
    assert len(read_records(records).records) == 4
    (results,) = tmp_path.glob("*/results.json")
    assert json.loads(results.read_text())["summary"]["requests"]["succeeded"] == 4


def test_bad_otlp_flags_are_usage_errors(tmp_path: Path) -> None:
    for args, says in (
        (["--otlp-metrics", "collector:4318"], "http(s) URL"),
        (["--otlp-metrics", "http://c:4318", "--otlp-header", "x"], "NAME=VALUE"),
        (["--otlp-header", "a=b"], "go with --otlp-metrics"),
        (["--otlp-metrics", "http://c:4318", "--otlp-interval", "0"], "more than 0"),
    ):
        p = latbench("run", "--requests", "1", "--out", str(tmp_path), *args, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert says in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------------------
# `latbench serve` with `otlp_metrics`: its runs' series go out the same way


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


def test_service_config_checks_the_otlp_endpoint() -> None:
    config = ServiceConfig.model_validate({"otlp_metrics": {"endpoint": "http://c:4318"}})
    assert config.otlp_metrics is not None
    assert config.otlp_metrics.endpoint == "http://c:4318/v1/metrics"
    with pytest.raises(ValidationError, match="http"):
        ServiceConfig.model_validate({"otlp_metrics": {"endpoint": "c:4318"}})
