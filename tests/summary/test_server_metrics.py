"""Client/server reconciliation (latbench/summary/server_metrics.py).

Three sources of server metrics: a recorded transcript of a real vLLM 0.32.0 (its /metrics
before and after a 6-request chat run, with that run's records: tests/data/vllm-0.32.0/); a page
of each other server latbench reads (SGLang, TGI, TensorRT-LLM, Dynamo: tests/data/
server_metrics/, built from each server's source, which each file's header cites); and the
built-in simulator, which serves any of those servers' families from what it really did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from time import monotonic, monotonic_ns
from typing import Any

import aiohttp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kit import paths
from kit.cli import latbench
from kit.promql import free_port
from kit.sim import Serve, truth, truth_of
from rich.console import Console

from latbench.records import read_records
from latbench.render.reconciliation import (
    prefix_cache_line,
    render_reconciliation,
    summary_line,
    ttft_split_line,
)
from latbench.render.sections import reconciliation_html
from latbench.sim import SimProcess
from latbench.summary.scraper import ServerMetricsScraper, default_metrics_url
from latbench.summary.server_metrics import (
    DIALECT_KEYS,
    DIALECTS,
    PAIRS,
    Histogram,
    NotRecognisedYet,
    ServerMetrics,
    ServerMetricsError,
    _client_side,
    client_samples,
    parse_metrics,
    peak_gauges,
    reconcile,
)

DATA = paths.DATA / "vllm-0.32.0"
LOOSE = (
    "validity: {ttft_tolerance: 50ms, itl_tolerance: 50ms, "
    "loop_lag_p99: 50ms, queue_delay_p99: 50ms}\n"
)


def recorded() -> tuple[list[Any], ServerMetrics]:
    records = read_records(DATA / "records.jsonl").records
    before = parse_metrics((DATA / "metrics-before.txt").read_text(), "tiny", t_ns=0)
    after = parse_metrics((DATA / "metrics-after.txt").read_text(), "tiny", t_ns=1)
    return records, ServerMetrics("http://127.0.0.1:8011/metrics", before, after)


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path | None]:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    out = tmp_path / "out"
    p = latbench("run", "--json", "--spec", str(spec), "--out", str(out), *args, timeout=180)
    dirs = [d for d in out.iterdir() if d.is_dir()] if out.exists() else []
    return p, dirs[0] if dirs else None


# --- a real vLLM's page ----------------------------------------------------------------------


def test_a_real_vllm_page_parses_into_its_families() -> None:
    snap = parse_metrics((DATA / "metrics-after.txt").read_text(), "tiny")
    assert set(snap.histograms) == {
        "ttft", "itl", "tpot", "e2e", "queue", "prefill", "decode", "inference",
    }  # fmt: skip
    ttft = snap.histograms["ttft"]
    assert ttft.bounds[:3] == (0.001, 0.005, 0.01) and ttft.bounds[-1] == 2560.0
    assert list(ttft.cumulative) == sorted(ttft.cumulative)  # cumulative
    assert snap.counters["requests"] >= 6  # summed over finished_reason
    assert snap.counters["generation_tokens"] >= 48
    assert {"running", "waiting", "kv_cache_usage"} <= set(snap.gauges)
    assert snap.dialect == "vllm"
    # Another model's series are not ours, and the message says whose page it was.
    with pytest.raises(ServerMetricsError, match=r"vLLM's metrics .* none for model 'another"):
        parse_metrics((DATA / "metrics-after.txt").read_text(), "another-model")


def test_the_recorded_run_reconciles_with_the_server() -> None:
    records, server = recorded()
    r = reconcile(records, server)
    assert r is not None
    assert r.same_requests and r.client_requests == 6 and r.server_requests == 6
    assert r.tokens == {
        "prompt": {"client": 720.0, "server": 720.0},
        "generation": {"client": 48.0, "server": 48.0},
    }
    ttft = r.pairs["ttft"]
    assert ttft.client.n == ttft.server.n == 6
    # 6 requests of 8 tokens, one per output: 7 gaps each on both sides.
    assert r.pairs["itl"].client.n == r.pairs["itl"].server.n == 42
    assert ttft.below_server_at == ()
    assert ttft.mean_overhead_s is not None and ttft.mean_overhead_s > 0
    # The overhead interval of a percentile is exactly the client's value minus the bucket.
    low, high = ttft.server.buckets_s["p50"]
    assert ttft.overhead_s["p50"] == (
        ttft.client.quantiles_s["p50"] - high,
        ttft.client.quantiles_s["p50"] - low,
    )
    split = r.ttft_split_s
    assert split is not None
    assert split["queue"] + split["prefill"] + split["server_other"] + split[
        "outside_server"
    ] == pytest.approx(split["client_ttft"])
    assert r.notes == ()


def test_a_client_faster_than_the_server_is_caught() -> None:
    """Shift every send 0.5 s later: each client TTFT drops below the server's, and the
    cumulative counts say so at the boundaries in between."""
    records, server = recorded()
    late = [dataclasses.replace(rec, t_sent=rec.ev_t[0] - 100_000) for rec in records]
    r = reconcile(late, server)
    assert r is not None and r.pairs["ttft"].below_server_at
    assert r.pairs["ttft"].below_server_at[0] <= 0.001


def test_other_traffic_on_the_server_is_noted_and_skips_the_per_request_check() -> None:
    records, server = recorded()
    assert server.after is not None
    counters = {**server.after.counters, "requests": server.after.counters["requests"] + 5}
    busy = dataclasses.replace(server, after=dataclasses.replace(server.after, counters=counters))
    r = reconcile(records, busy)
    assert r is not None and not r.same_requests
    assert any("other traffic" in n for n in r.notes)
    assert r.pairs["ttft"].below_server_at == ()  # not judged on different populations


def test_the_new_name_wins_over_the_deprecated_one() -> None:
    def family(name: str, count: int) -> str:
        return (
            f"# TYPE {name} histogram\n"
            f'{name}_bucket{{le="0.1"}} {count}\n{name}_bucket{{le="+Inf"}} {count}\n'
            f"{name}_count {count}\n{name}_sum {count * 0.01}\n"
        )

    for page in (
        family("vllm:time_per_output_token_seconds", 5)
        + family("vllm:inter_token_latency_seconds", 7),
        family("vllm:inter_token_latency_seconds", 7)
        + family("vllm:time_per_output_token_seconds", 5),
    ):
        assert parse_metrics(page, None).histograms["itl"].count == 7
    old_only = parse_metrics(family("vllm:time_per_output_token_seconds", 5), None)
    assert old_only.histograms["itl"].count == 5


def test_a_server_that_restarted_during_the_run_is_named_not_reconciled() -> None:
    records, server = recorded()
    assert server.before is not None and server.after is not None
    server.before.counters["requests"] = server.after.counters["requests"] + 100  # went down
    with pytest.raises(ServerMetricsError, match="restarted"):
        reconcile(records, server)


def test_summary_of_a_run_with_a_broken_scrapes_file_still_summarizes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "records.jsonl").write_bytes((DATA / "records.jsonl").read_bytes())
    (run_dir / "server_metrics.json").write_text("{not json")
    p = latbench("summary", str(run_dir / "records.jsonl"), "--json", timeout=60)
    assert "not a server metrics file" in p.stderr and "no reconciliation" in p.stderr
    assert json.loads(p.stdout)["requests"]["succeeded"] == 6


@settings(max_examples=300, deadline=None)
@given(
    server=st.lists(st.floats(0, 0.3), min_size=1, max_size=12),
    extra=st.lists(st.floats(0, 0.02), min_size=12, max_size=12),
)
def test_a_client_no_faster_than_the_server_is_never_below_its_bucket(
    server: list[float], extra: list[float]
) -> None:
    """Per request, client >= server; then every client percentile in the reconciliation is at
    or above the lower bound of the server's bucket for it, however few the requests (the
    client's percentile follows the bucket's rank rule, not linear interpolation)."""
    bounds = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5)
    srv = np.asarray(server)
    cli = srv + np.asarray(extra[: len(server)])
    cum = (*(float((srv <= b).sum()) for b in bounds), float(srv.size))
    h = Histogram(bounds, cum, float(srv.sum()))
    side = _client_side(cli)
    for q, value in side.quantiles_s.items():
        low, _ = h.quantile_bucket(float(q[1:]))
        assert value >= low, (q, value, low)


def test_histogram_quantile_buckets_and_deltas() -> None:
    h = Histogram((0.1, 0.2, 0.5), (2.0, 5.0, 9.0, 10.0), 3.0)
    assert h.quantile_bucket(20) == (0.0, 0.1)
    assert h.quantile_bucket(50) == (0.1, 0.2)
    assert h.quantile_bucket(90) == (0.2, 0.5)
    assert h.quantile_bucket(99) == (0.5, math.inf)
    earlier = Histogram((0.1, 0.2, 0.5), (1.0, 1.0, 1.0, 1.0), 0.05)
    assert h.minus(earlier) == Histogram((0.1, 0.2, 0.5), (1.0, 4.0, 8.0, 9.0), 2.95)
    with pytest.raises(ServerMetricsError, match="bucket boundaries changed"):
        h.minus(Histogram((0.1, 0.3, 0.5), (0.0, 0.0, 0.0, 0.0), 0.0))


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("<html>not metrics</html>", "not Prometheus text"),
        ("# HELP up up\n# TYPE up gauge\nup 1\n", "no metrics of a server latbench knows"),
        (
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            'vllm:time_to_first_token_seconds_bucket{le="0.1"} 1\n'
            "vllm:time_to_first_token_seconds_sum 0.05\n",
            r"no \+Inf bucket",
        ),
    ],
)
def test_pages_that_are_not_vllms_are_named(page: str, message: str) -> None:
    with pytest.raises(ServerMetricsError, match=message):
        parse_metrics(page, None)


# --- the simulator, end to end ---------------------------------------------------------------


def test_a_run_against_the_simulator_reconciles_by_default(tmp_path: Path) -> None:
    p, d = run(
        tmp_path,
        "--requests", "40", "--concurrency", "4", "--output-tokens", "16",
        "--sim", "ttft=0.02", "--sim", "itl=0.01", "--sim", "max_batch=2",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert d is not None
    r = json.loads(p.stdout)["reconciliation"]
    assert r["same_requests"] and r["client_requests"] == r["server_requests"] == 40
    assert r["tokens"]["generation"] == {"client": 640.0, "server": 640.0}
    assert r["tokens"]["prompt"]["client"] == r["tokens"]["prompt"]["server"]
    for metric in ("ttft", "e2e"):
        pair = r["pairs"][metric]
        assert pair["below_server_at"] == [], pair
        assert pair["mean_overhead_s"] > 0
    # max_batch 2 of 4 users: half wait for a slot, and the split shows it as queue time.
    split = r["ttft_split_s"]
    assert split["queue"] > 0.02 and split["prefill"] == pytest.approx(0.02, abs=0.01)
    # Scrapes every 2 s during a run of about 3 s. Whether one lands while two requests wait is
    # the machine's timing (a slow start of the workers and the only scrape during the run can
    # find an idle server), so the peak is checked against what the scrapes read and the
    # server's limits; that the scrapes read a server's gauges as they are is
    # test_the_scrapes_read_a_held_servers_gauges, on a server held in a known state.
    scrapes = json.loads((d / "server_metrics.json").read_text())
    assert len(scrapes["timeline"]) >= 3 and scrapes["errors"] == []
    assert scrapes["server"] == "vLLM" and r["server"] == "vLLM"
    rows = scrapes["timeline"]
    assert r["peak"] == {k: max(row[k] for row in rows) for k in ("running", "waiting")}
    assert 0 <= r["peak"]["running"] <= 2 and 0 <= r["peak"]["waiting"] <= 2
    assert "client vs server" not in p.stdout  # --json: no tables


def test_the_table_is_printed_without_json(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "run", "--spec", str(spec), "--out", str(tmp_path), "--requests", "6",
        "--concurrency", "2", "--output-tokens", "4", timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "client vs server: vLLM's own metrics" in p.stdout
    assert "generation tokens: client (usage) 24, server 24: agree" in p.stdout


def test_server_metrics_off(tmp_path: Path) -> None:
    p, d = run(tmp_path, "--requests", "4", "--output-tokens", "4", "--server-metrics", "off")
    assert p.returncode == 0, p.stderr
    assert d is not None and not (d / "server_metrics.json").exists()
    assert "reconciliation" not in json.loads(p.stdout)


def test_an_explicit_page_that_cannot_be_read_is_said_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    p, _ = run(tmp_path, "--requests", "4", "--output-tokens", "4", "--server-metrics", url)
    assert p.returncode == 0, p.stderr
    assert "server metrics:" in p.stderr and url in p.stderr and "running without them" in p.stderr
    summary = json.loads(p.stdout)
    assert "reconciliation" not in summary and summary["requests"]["succeeded"] == 4


def test_a_bad_server_metrics_value_is_a_usage_error(tmp_path: Path) -> None:
    p, _ = run(tmp_path, "--requests", "1", "--server-metrics", "sometimes")
    assert p.returncode == 2
    assert "server_metrics 'sometimes'" in p.stderr


# --- the prefix cache's hit rate -------------------------------------------------------------


def with_prefix_counters(page: str, queries: float, hits: float) -> str:
    """The recorded page with its prefix-cache counters set to these values."""
    out = []
    for line in page.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total{"):
            line = line.rsplit(" ", 1)[0] + f" {queries}"
        elif line.startswith("vllm:prefix_cache_hits_total{"):
            line = line.rsplit(" ", 1)[0] + f" {hits}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_prefix_cache_hit_rate_is_the_counters_growth_over_the_run() -> None:
    records, server = recorded()
    r = reconcile(records, server)
    # The recorded run's 6 prompts were each their own: 720 tokens looked up, none found. A
    # cache that never hit says 0 %, not nothing.
    assert r is not None and r.prefix_cache == {"queries": 720.0, "hits": 0.0, "hit_rate": 0.0}
    page = (DATA / "metrics-after.txt").read_text()
    before = parse_metrics(with_prefix_counters(page, 1000, 400), "tiny", t_ns=0)
    after = parse_metrics(with_prefix_counters(page, 1800, 1000), "tiny", t_ns=1)
    r = reconcile(records, ServerMetrics("u", before, after))
    assert r is not None and r.prefix_cache is not None
    assert r.prefix_cache == {"queries": 800.0, "hits": 600.0, "hit_rate": 0.75}
    assert r.to_dict()["prefix_cache"]["hit_rate"] == 0.75
    # No lookups during the run: no rate, said as such.
    r = reconcile(records, ServerMetrics("u", before, before))
    assert r is not None and r.prefix_cache == {"queries": 0.0, "hits": 0.0, "hit_rate": None}
    assert prefix_cache_line(r) == "prefix cache: no prompt tokens looked up during the run"
    # A counter that went down: the server restarted.
    with pytest.raises(ServerMetricsError, match="prefix_cache_queries_total went down"):
        reconcile(records, ServerMetrics("u", after, before))


def test_a_server_without_prefix_cache_counters_says_nothing_of_it() -> None:
    records, _ = recorded()
    page = "\n".join(
        line
        for line in (DATA / "metrics-after.txt").read_text().splitlines()
        if "prefix_cache" not in line
    )
    snap = parse_metrics(page, "tiny")
    r = reconcile(records, ServerMetrics("u", snap, snap))
    assert r is not None and r.prefix_cache is None and r.to_dict()["prefix_cache"] is None
    assert prefix_cache_line(r) is None
    console = Console(record=True, width=200)
    render_reconciliation(r, console)
    assert "prefix cache" not in console.export_text()
    assert "prefix cache" not in reconciliation_html(r)


def test_the_hit_rate_is_shown_next_to_ttft_in_terminal_and_html() -> None:
    records, _ = recorded()
    page = (DATA / "metrics-before.txt").read_text()
    before = parse_metrics(with_prefix_counters(page, 100, 0), "tiny", t_ns=0)
    page = (DATA / "metrics-after.txt").read_text()
    after = parse_metrics(with_prefix_counters(page, 4100, 2500), "tiny", t_ns=1)
    r = reconcile(records, ServerMetrics("u", before, after))
    assert r is not None
    line = "prefix cache: 62.5% of prompt tokens hit (2,500 of 4,000 looked up"
    console = Console(record=True, width=200)
    render_reconciliation(r, console)
    text = console.export_text()
    assert line in text and text.index("TTFT, mean") < text.index(line)
    assert line in reconciliation_html(r)
    assert summary_line(r) is not None and line in summary_line(r)


# --- other servers: SGLang, TGI, TensorRT-LLM, Dynamo ------------------------------------------

SERVERS = paths.DATA / "server_metrics"
# dialect -> the server's name, the client metrics it has a histogram for, its phases.
OTHER: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "sglang": ("SGLang", ("ttft", "itl", "e2e"), ("queue",)),
    "tgi": ("TGI", ("e2e",), ("queue", "inference", "time_per_token")),
    "trtllm": (
        "TensorRT-LLM",
        ("ttft", "tpot", "e2e"),
        ("queue", "prefill", "decode", "inference"),
    ),
    "dynamo": ("Dynamo", ("ttft", "itl", "e2e"), ()),
}


def fresh(page: str) -> str:
    """The page as the server showed it before its first request: every sample 0."""
    lines = page.splitlines()
    return (
        "\n".join(
            line if not line or line.startswith("#") else line.rsplit(" ", 1)[0] + " 0"
            for line in lines
        )
        + "\n"
    )


@pytest.mark.parametrize("dialect", list(OTHER))
def test_each_servers_page_reconciles_with_the_recorded_run(dialect: str) -> None:
    """Each page is a fresh server's after the 6 recorded requests, its times the client's less
    1.5 ms at each end (its header): the exact means find those 1.5 ms in every format."""
    server, pairs, phases = OTHER[dialect]
    page = (SERVERS / f"{dialect}.txt").read_text()
    records = read_records(DATA / "records.jsonl").records
    before, after = parse_metrics(fresh(page), "tiny", t_ns=0), parse_metrics(page, "tiny", t_ns=1)
    assert before.dialect == after.dialect == dialect  # recognised, not told
    r = reconcile(records, ServerMetrics("u", before, after))
    assert r is not None and r.server == server and r.dialect == dialect
    assert r.same_requests and r.server_requests == 6
    assert r.tokens == {
        "prompt": {"client": 720.0, "server": 720.0},
        "generation": {"client": 48.0, "server": 48.0},
    }
    assert tuple(r.pairs) == pairs and tuple(r.phases) == phases
    assert r.missing == tuple(m for m in PAIRS if m not in pairs)
    if "ttft" in r.pairs:
        assert r.pairs["ttft"].mean_overhead_s == pytest.approx(0.0015, abs=2e-6)
        assert r.pairs["ttft"].below_server_at == ()
    assert r.pairs["e2e"].mean_overhead_s == pytest.approx(0.003, abs=2e-6)
    assert r.pairs["e2e"].below_server_at == ()
    if "itl" in r.pairs:  # per token on both sides: 6 requests of 8 tokens, 7 gaps each
        assert r.pairs["itl"].client.n == r.pairs["itl"].server.n == 42
    console = Console(record=True, width=200)
    render_reconciliation(r, console)
    text = console.export_text()
    assert f"client vs server: {server}'s own metrics" in text and "vLLM" not in text
    assert "generation tokens: client (usage) 48, server 48: agree" in text
    assert f"{server}'s own metrics" in reconciliation_html(r)
    missing = ", ".join(m.upper() for m in r.missing)
    assert f"{server} exports no {missing} histogram" in text
    split = ttft_split_line(r)
    if dialect == "tgi":  # no server TTFT, so no split of it
        assert split is None and r.ttft_split_s is None
    elif dialect == "trtllm":  # queue and prefill measured: the rest is its front end
        assert split is not None and "prefill" in split and "front end " in split
        assert "and output" not in split and "tokenising" not in split  # one name, one meaning
    else:  # what it does not measure stays in the rest, never a zero
        assert split is not None and "prefill" not in split
        assert f"the rest of {server}'s TTFT" in split
        assert r.ttft_split_s is not None and r.ttft_split_s["prefill"] is None


def test_the_server_is_the_one_with_the_most_families_on_the_page() -> None:
    vllm = (DATA / "metrics-after.txt").read_text()
    dynamo = (SERVERS / "dynamo.txt").read_text()
    assert parse_metrics(vllm + dynamo, "tiny").dialect == "vllm"  # 16 families to 6
    assert parse_metrics(dynamo + vllm, "tiny").dialect == "vllm"
    assert parse_metrics(vllm + dynamo, "tiny", dialect="dynamo").dialect == "dynamo"
    with pytest.raises(ServerMetricsError, match=r"SGLang's metrics .* none for model 'other'"):
        parse_metrics((SERVERS / "sglang.txt").read_text(), "other")
    with pytest.raises(ServerMetricsError, match=r"no TGI metrics \(tgi_\*\)"):
        parse_metrics(vllm, None, dialect="tgi")


def test_a_tgi_restart_names_its_token_histogram() -> None:
    records = read_records(DATA / "records.jsonl").records
    page = (SERVERS / "tgi.txt").read_text()
    line = "tgi_request_input_length_sum 720\n"
    assert line in page
    restarted = page.replace(line, "tgi_request_input_length_sum 7\n")
    before, after = parse_metrics(page, None, t_ns=0), parse_metrics(restarted, None, t_ns=1)
    with pytest.raises(ServerMetricsError, match="tgi_request_input_length_sum went down"):
        reconcile(records, ServerMetrics("u", before, after))


def without(page: str, keep: Callable[[str], bool]) -> str:
    """The page with only the families `keep` accepts (by the name its TYPE line gives, less a
    counter's `_total`); the fixture's own header comments left out."""
    out, family = [], ""
    for line in page.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            family = line.split()[2].removesuffix("_total")
        elif line.startswith("#") or not line:
            continue
        if keep(family):
            out.append(line)
    return "\n".join(out) + "\n" if out else ""


def gauges_only(dialect: str) -> Callable[[str], bool]:
    return lambda fam: fam in DIALECTS[dialect].gauges.values()


@pytest.mark.parametrize("dialect", list(OTHER))
def test_a_fresh_server_that_has_not_created_its_series_reconciles_from_zero(
    dialect: str,
) -> None:
    """SGLang, TGI, TensorRT-LLM and Dynamo create each series at its first observation, so
    before the first request their page has none (an empty page; at most gauges): the page is
    nobody's yet, and read once a later page says whose, its series count from zero, giving
    exactly what a page of zeros would."""
    page = (SERVERS / f"{dialect}.txt").read_text()
    records = read_records(DATA / "records.jsonl").records
    after = parse_metrics(page, "tiny", t_ns=1)
    zeros = reconcile(records, ServerMetrics("u", parse_metrics(fresh(page), "tiny", 0), after))
    assert zeros is not None
    with pytest.raises(NotRecognisedYet, match="no metrics of a server latbench knows"):
        parse_metrics("", "tiny")
    assert parse_metrics(without(page, gauges_only(dialect)), "tiny").dialect == dialect
    for lazy in ("", without(page, gauges_only(dialect))):
        before = parse_metrics(lazy, "tiny", t_ns=0, dialect=dialect)
        assert before.histograms == {} and before.counters == {}
        r = reconcile(records, ServerMetrics("u", before, after))
        assert r is not None and r.to_dict() == zeros.to_dict()
        assert tuple(r.pairs) == OTHER[dialect][1] and r.same_requests


def test_a_family_created_during_the_run_is_not_dropped_nor_called_missing() -> None:
    """A page before the run that has SGLang's TTFT and E2E but not yet its ITL (no request
    had a second token): the ITL pair is still made, counted from zero."""
    page = (SERVERS / "sglang.txt").read_text()
    records = read_records(DATA / "records.jsonl").records
    before = parse_metrics(
        without(fresh(page), lambda fam: fam != "sglang:inter_token_latency_seconds"), "tiny", 0
    )
    assert before.dialect == "sglang" and "itl" not in before.histograms
    r = reconcile(records, ServerMetrics("u", before, parse_metrics(page, "tiny", 1)))
    assert r is not None and tuple(r.pairs) == ("ttft", "itl", "e2e")
    assert r.missing == ("tpot",) and r.pairs["itl"].server.n == 42


def test_a_page_that_only_declares_its_families_is_recognised() -> None:
    """prometheus_client writes a labelled family without series as its HELP and TYPE lines
    (TensorRT-LLM before its first request): those say whose page it is."""
    declared = "".join(
        line + "\n"
        for line in (SERVERS / "trtllm.txt").read_text().splitlines()
        if line.startswith(("# HELP trtllm_", "# TYPE trtllm_"))
    )
    snap = parse_metrics(declared, "tiny")
    assert snap.dialect == "trtllm" and snap.histograms == {} and snap.counters == {}


def test_dynamos_lowercased_model_label_matches_the_model_as_given() -> None:
    """Dynamo's frontend lowercases the model label (metrics.rs: model.to_lowercase()), so a
    run with --model Tiny reads the series labelled tiny; vLLM keeps the model as served."""
    page = (SERVERS / "dynamo.txt").read_text()
    assert 'model="tiny"' in page
    for model in ("Tiny", "TINY", "tiny"):
        snap = parse_metrics(page, model)
        assert snap.dialect == "dynamo" and snap.counters["requests"] == 6
    with pytest.raises(NotRecognisedYet, match="none for model 'Tiny'"):
        parse_metrics((DATA / "metrics-after.txt").read_text(), "Tiny")


def test_a_page_of_another_server_read_as_this_ones_is_refused() -> None:
    vllm = (DATA / "metrics-after.txt").read_text()
    with pytest.raises(ServerMetricsError, match=r"no TGI metrics .* but vLLM's"):
        parse_metrics(vllm, None, dialect="tgi")
    # A family that disappeared during the run: the server restarted (or another answered).
    page = (SERVERS / "sglang.txt").read_text()
    records = read_records(DATA / "records.jsonl").records
    after = parse_metrics(without(page, lambda f: f != "sglang:num_requests"), "tiny", 1)
    with pytest.raises(ServerMetricsError, match="sglang:num_requests_total disappeared"):
        reconcile(records, ServerMetrics("u", parse_metrics(page, "tiny", 0), after))


def test_a_per_token_servers_itl_is_set_against_the_clients_itl_per_token() -> None:
    """SGLang and Dynamo observe ITL once per token, each gap split evenly over its tokens: the
    client's side then holds each of its per-token gaps once per token, the same observations
    (a 2-token event after 20 ms: two of 10 ms on both sides)."""
    records = read_records(DATA / "records.jsonl").records
    plain = client_samples(records)["itl"]
    assert np.array_equal(client_samples(records, itl_per_token=True)["itl"], plain)
    two = [dataclasses.replace(r, ev_n=[2] * len(r.ev_t)) for r in records if r.ok]
    per_token = client_samples(two, itl_per_token=True)["itl"]
    assert per_token.size == 2 * plain.size
    assert np.allclose(np.sort(per_token), np.sort(np.repeat(plain / 2, 2)))


def test_the_tgi_fixture_is_a_possible_page() -> None:
    """TGI's total time is its validation, queue and inference times end to end (server.rs),
    so the sums add up; and its time per token is inference over the 8 tokens of each."""
    snap = parse_metrics((SERVERS / "tgi.txt").read_text(), None)
    validation = float(
        next(
            line.split()[1]
            for line in (SERVERS / "tgi.txt").read_text().splitlines()
            if line.startswith("tgi_request_validation_duration_sum")
        )
    )
    h = snap.histograms
    assert validation + h["queue"].sum + h["inference"].sum == pytest.approx(h["e2e"].sum)
    assert h["time_per_token"].sum == pytest.approx(h["inference"].sum / 8)


def test_a_scrapes_file_without_a_dialect_is_vllms() -> None:
    """server_metrics.json written before other servers were read keeps reading as vLLM's."""
    _, server = recorded()
    d = server.to_dict()
    assert d["server"] == "vLLM" and d["before"]["dialect"] == "vllm"
    for snap in ("before", "after"):
        del d[snap]["dialect"]
    again = ServerMetrics.from_dict(d)
    assert again.before is not None and again.before.dialect == "vllm"


@pytest.mark.parametrize("dialect", DIALECT_KEYS)
def test_a_run_against_each_simulated_server_agrees_with_its_truth(
    dialect: str, sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """The simulator serves each server's page, created as that server creates it (vLLM's at
    start, the others' series at their first observation, so a fresh one's page before the run
    has none); latbench recognises it from the pages alone (TensorRT-LLM's at
    /prometheus/metrics), and the server's side of each pair is what the simulator recorded of
    every request (/sim/truth), to the microsecond. The model's name is mixed case, which
    Dynamo lowercases in its labels."""
    server = DIALECTS[dialect].server
    proc = sim(metrics_dialect=dialect, ttft=0.02, itl=0.005, max_batch=2, model="Sim-Model")
    p, d = run(
        tmp_path, "--target", proc.url, "--model", "Sim-Model",
        "--requests", "12", "--concurrency", "3", "--output-tokens", "8",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert d is not None
    r = json.loads(p.stdout)["reconciliation"]
    assert r["server"] == server and r["dialect"] == dialect
    assert r["same_requests"] and r["client_requests"] == r["server_requests"] == 12
    assert r["tokens"]["generation"] == {"client": 96.0, "server": 96.0}
    assert r["tokens"]["prompt"]["client"] == r["tokens"]["prompt"]["server"]
    scrapes = json.loads((d / "server_metrics.json").read_text())
    assert scrapes["server"] == server and scrapes["dialect"] == dialect
    assert scrapes["url"].endswith("/prometheus/metrics" if dialect == "trtllm" else "/metrics")
    if dialect != "vllm":  # the page before the run had none of the server's series yet
        assert scrapes["before"]["histograms"] == {} and scrapes["before"]["counters"] == {}
    # The run's requests, as the simulator kept them (anything before the first scrape, such as
    # the preflight's, is not the run's: one clock, CLOCK_MONOTONIC, on both sides).
    start = scrapes["before"]["t_ns"]
    done = [t for t in truth_of(proc.url) if t["arrival_ns"] > start and t["events_ns"]]
    assert len(done) == 12
    ttft = np.mean([t["events_ns"][0] - t["arrival_ns"] for t in done]) / 1e9
    e2e = np.mean([t["events_ns"][-1] - t["arrival_ns"] for t in done]) / 1e9
    pairs = r["pairs"]
    assert set(pairs) == set(OTHER.get(dialect, (server, PAIRS, ()))[1])
    assert pairs["e2e"]["server"]["mean_s"] == pytest.approx(e2e, abs=1e-6)
    assert pairs["e2e"]["below_server_at"] == [] and pairs["e2e"]["mean_overhead_s"] > 0
    if "ttft" in pairs:
        assert pairs["ttft"]["server"]["mean_s"] == pytest.approx(ttft, abs=1e-6)
        assert pairs["ttft"]["below_server_at"] == [] and pairs["ttft"]["mean_overhead_s"] > 0
    if "itl" in pairs:  # one token an event: per token and per step are the same 7 gaps each
        assert pairs["itl"]["client"]["n"] == pairs["itl"]["server"]["n"] == 12 * 7
    if "queue" in r["phases"]:  # three users, two slots: someone waited
        assert r["phases"]["queue"]["n"] == 12 and r["phases"]["queue"]["mean_s"] > 0


@pytest.mark.parametrize("dialect", ["sglang", "dynamo", "vllm"])
def test_itl_is_compared_like_with_like_when_events_bring_two_tokens(
    dialect: str, sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """Two tokens an event, 10 ms apart: SGLang and Dynamo observe two 5 ms ITLs per event, so
    the client's side is its ITL per token, counted per token (as many observations, means
    within the time the events took to arrive); vLLM observes one per step, as the client."""
    proc = sim(metrics_dialect=dialect, ttft=0.02, itl=0.01, tokens_per_event=2)
    p, _ = run(
        tmp_path, "--target", proc.url, "--model", "sim-model",
        "--requests", "8", "--concurrency", "2", "--output-tokens", "16",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)["reconciliation"]
    itl = r["pairs"]["itl"]
    per_token = dialect != "vllm"
    assert r["itl_per_token"] is per_token
    # 8 events of 2 tokens a request: 7 gaps, each of 2 tokens.
    assert itl["client"]["n"] == itl["server"]["n"] == 8 * 7 * (2 if per_token else 1)
    want = 0.005 if per_token else 0.01
    assert itl["server"]["mean_s"] == pytest.approx(want, rel=0.2)
    assert abs(itl["mean_overhead_s"]) < 0.001, itl


def test_a_page_that_is_never_a_known_servers_is_said_after_the_run(
    sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """A page of Prometheus text that no scrape, before, during or after the run, recognises
    (here the simulator's DCGM page) is scraped on in case the server creates its series
    later, then named after the run; the run's own figures stand."""
    proc = sim(ttft=0.002, itl=0.001, gpu={"count": 1})
    url = f"{proc.url}/dcgm/metrics"
    p, d = run(tmp_path, "--target", proc.url, "--requests", "4", "--output-tokens", "4",
               "--server-metrics", url)  # fmt: skip
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stderr.split())
    assert "server metrics: before, during and after the run: no metrics of a server" in text
    assert "no reconciliation" in text and "Traceback" not in text
    out = json.loads(p.stdout)
    assert "reconciliation" not in out and out["requests"]["succeeded"] == 4
    assert d is not None
    scrapes = json.loads((d / "server_metrics.json").read_text())
    assert scrapes["before"] is None and scrapes["server"] is None


# Four requests held in their first token by a server with two slots.
HELD = {
    "vllm": {"running": 2, "waiting": 2},
    "sglang": {"running": 2, "waiting": 2},
    "tgi": {"running": 2, "waiting": 2},
    "trtllm": {"running": 2, "waiting": 2},
    "dynamo": {"inflight": 4},  # its frontend counts every request it holds
}


@pytest.mark.parametrize("dialect", DIALECT_KEYS)
async def test_the_scrapes_read_a_held_servers_gauges(dialect: str, serve: Serve) -> None:
    """A server held where its gauges must read two running and two waiting (a 60 s TTFT, two
    slots, four requests): once the simulator has all four, the scrapes during the run read
    exactly that, and the peak is theirs. No timing decides it: the state lasts a minute."""
    url = await serve(metrics_dialect=dialect, ttft=60.0, max_batch=2)
    body = {"model": "sim-model", "prompt": "a b c", "max_tokens": 2, "stream": True}

    async def send(http: aiohttp.ClientSession) -> None:
        async with http.post(url + "/v1/completions", json=body) as resp:
            await resp.read()

    async with aiohttp.ClientSession() as http:
        held = [asyncio.create_task(send(http)) for _ in range(4)]
        scraper = ServerMetricsScraper(http, default_metrics_url(url), "sim-model", every_s=0.05)
        try:
            assert await scraper.start(), scraper.result.errors
            deadline = monotonic() + 20
            while len(await truth(url, http)) < 4:
                assert monotonic() < deadline, "the simulator never had the four requests"
                await asyncio.sleep(0.02)
            all_in = monotonic_ns()
            # Two scrapes begun after all four arrived (each row is stamped after its page).
            while sum(row["t_ns"] > all_in for row in scraper.result.timeline) < 3:
                assert monotonic() < deadline, scraper.result.errors
                await asyncio.sleep(0.02)
        finally:
            await scraper.cancel()
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
    result = scraper.result
    assert result.errors == [] and result.dialect is not None and result.dialect.key == dialect
    late = [row for row in result.timeline if row["t_ns"] > all_in]
    for row in late[1:]:  # the first may have been begun before the last arrival
        assert {k: row[k] for k in HELD[dialect]} == HELD[dialect], row
    assert peak_gauges(result.timeline, result.dialect) == HELD[dialect]
