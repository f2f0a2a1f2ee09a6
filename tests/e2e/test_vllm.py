"""End to end against a real vLLM server: vLLM's CPU build serving a tiny random-weight model.

`.ci/run` prepares both with tests/vllm/setup.sh (cached) and exports LATBENCH_VLLM_PYTHON and
LATBENCH_VLLM_MODEL; without them these tests are skipped. On 2 cores vLLM's busy-polling can
starve both its own API server and latbench's event loop, so every run here is flagged
client-bound by the default limits: the tests loosen them and assert structure, token counts and
the client/server reconciliation, not timings.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import cli
from kit.promql import wait_for
from kit.vllm import VLLM_ENV, VLLM_PYTHON, base_args, needs_vllm, serve

from latbench.exporter.series import TTFT_BUCKETS
from latbench.records import read_records
from latbench.vllm import VllmServer

pytestmark = needs_vllm
OUTPUT_TOKENS = 24
LOOSE = (
    "validity: {ttft_tolerance: 10s, itl_tolerance: 10s, "
    "loop_lag_p99: 10s, queue_delay_p99: 10s, client_cpu: 1.0}\n"
)


# The shared server reports TTFT in latbench's own (finer) buckets, as docs/vllm.md suggests; the
# reconciliation must read the boundaries off the page. The launch test keeps vLLM's defaults.
CUSTOM_BUCKETS = ["--custom-histogram-buckets", json.dumps({"time_to_first_token": TTFT_BUCKETS})]


def latbench(*args: str) -> subprocess.CompletedProcess[str]:
    return cli.latbench(*args, env=VLLM_ENV)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    with serve(tmp_path_factory.mktemp("vllm") / "vllm.log", *CUSTOM_BUCKETS) as server:
        yield server


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_latbench_against_real_vllm(
    vllm: VllmServer, tmp_path: Path, api: str, concurrency: int
) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    requests = 2 * concurrency + 2
    p = latbench(
        "run",
        "--target",
        vllm.url,
        "--api",
        api,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--output-tokens",
        str(OUTPUT_TOKENS),
        "--input-tokens",
        "64",
        "--spec",
        str(spec),
        "--json",
        "--out",
        str(tmp_path / "out"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["requests"]["failed"] == 0
    assert summary["requests"]["succeeded"] == requests

    # Records are complete; token counts come from usage and match max_tokens (ignore_eos).
    f = read_records(run_dir(tmp_path / "out") / "records.jsonl")
    assert f.footer is not None and len(f.records) == requests
    for r in f.records:
        assert r.ok and r.status == 200 and r.finish_reason == "length", r
        assert r.max_tokens == OUTPUT_TOKENS
        assert r.usage_completion_tokens == OUTPUT_TOKENS
        assert r.usage_prompt_tokens is not None and r.usage_prompt_tokens > 0
        assert r.ev_t and list(r.ev_t) == sorted(r.ev_t) and r.ev_t[0] >= r.t_sent
        # continuous usage stats: each token-bearing event carries its token count, also when
        # its text is empty (random weights) or it holds several tokens (merged outputs).
        assert r.ev_n is not None and len(r.ev_n) == len(r.ev_t)
        assert all(n >= 1 for n in r.ev_n) and sum(r.ev_n) == OUTPUT_TOKENS
        assert r.t_end is not None and r.t_end >= r.ev_t[-1]
    tokens = summary["tokens"]
    assert tokens["output_total"] == requests * OUTPUT_TOKENS
    assert tokens["received_exact"] == requests and tokens["sources"]["usage"] == requests

    # The reconciliation with vLLM's own metrics.
    recon = summary["reconciliation"]
    assert recon["url"] == f"{vllm.url}/metrics"
    assert recon["same_requests"] and recon["server_requests"] == requests
    assert recon["tokens"]["generation"] == {
        "client": requests * OUTPUT_TOKENS,
        "server": requests * OUTPUT_TOKENS,
    }
    assert recon["tokens"]["prompt"]["client"] == recon["tokens"]["prompt"]["server"]
    pairs = recon["pairs"]
    assert set(pairs) == {"ttft", "itl", "tpot", "e2e"}
    scrapes = json.loads((run_dir(tmp_path / "out") / "server_metrics.json").read_text())
    assert tuple(scrapes["after"]["histograms"]["ttft"]["bounds"]) == TTFT_BUCKETS
    ttft_low, ttft_high = pairs["ttft"]["server"]["buckets_s"]["p50"]
    assert ttft_low in (0.0, *TTFT_BUCKETS) and ttft_high in (*TTFT_BUCKETS, None)
    for metric in ("ttft", "e2e"):
        pair = pairs[metric]
        assert pair["client"]["n"] == pair["server"]["n"] == requests
        # No request is faster at the client than at the server: at every bucket boundary the
        # client has no more requests at or under it than the server.
        assert pair["below_server_at"] == [], (metric, pair)
        assert pair["mean_overhead_s"] > 0, (metric, pair)
        for q, (low, _high) in pair["server"]["buckets_s"].items():
            assert pair["client"]["quantiles_s"][q] >= low, (metric, q, pair)
    # vLLM observes one ITL per output; the client sees one gap per token-bearing event, and
    # merged outputs only make fewer, so never more.
    client_gaps = sum(len(r.ev_t) - 1 for r in f.records)
    assert pairs["itl"]["client"]["n"] == client_gaps <= pairs["itl"]["server"]["n"]
    split = recon["ttft_split_s"]
    parts = split["queue"] + split["prefill"] + split["server_other"] + split["outside_server"]
    assert parts == pytest.approx(split["client_ttft"])
    assert split["outside_server"] > 0 and split["prefill"] > 0
    # The scrapes are kept next to the records, and `summary` recomputes the same reconciliation.
    again = latbench("summary", str(run_dir(tmp_path / "out") / "records.jsonl"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reconciliation"] == recon


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_launch_vllm_runs_and_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    """`run --launch-vllm`: vLLM starts, the run measures, Ctrl-C drains the run, vLLM is stopped
    and its log is kept next to the records. Tracing is on by default: vLLM sends each request's
    span to the run's own receiver, and every measured request is joined with its span."""
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    out = tmp_path / "out"
    proc = cli.spawn(
        "run", "--launch-vllm", " ".join(base_args()), "--vllm-python", str(VLLM_PYTHON),
        "--api", "completions", "--concurrency", "2", "--duration", "300s",
        "--output-tokens", "16", "--spec", str(spec), "--out", str(out), env=VLLM_ENV,
    )  # fmt: skip
    try:

        def measured() -> bool:
            dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
            records = dirs[0] / "records.jsonl" if dirs else None
            return (
                records is not None
                and records.exists()
                and records.read_text().count('"type":"request"') >= 4
            )

        wait_for(measured, 300, "records from the launched vLLM", interval=0.5)
        log = run_dir(out) / "vllm.log"
        port = int(log.read_text().split("--port ", 1)[1].split()[0])
        assert not port_closed(port)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "vLLM stopped" in stderr
    wait_for(lambda: port_closed(port), 30, "vLLM's port to close")
    d = run_dir(out)
    assert "Application startup complete" in (d / "vllm.log").read_text()
    f = read_records(d / "records.jsonl")
    assert f.footer is not None and f.footer.ended == "stopped"
    assert len(f.records) >= 4 and all(r.ok for r in f.records)
    assert (d / "server_metrics.json").exists()
    results = json.loads((d / "results.json").read_text())
    assert results["reconciliation"]["same_requests"] is True
    # The per-request join, as launched: one span per measured request, none extra or missing.
    measured = [r for r in f.records if r.phase == "measure" and r.ok]
    joined = results["server_spans"]
    assert joined is not None, results["warnings"]
    assert joined["matched"] == len(measured) > 0
    assert joined["requests_without_span"] == joined["spans_without_request"] == 0
    assert joined["duplicate_spans"] == joined["token_mismatches"] == 0
    assert joined["server_ttft_above_client"] == 0
    receiver = joined["receiver"]
    assert receiver["rejected_payloads"] == receiver["rejected_spans"] == 0
    assert f.header is not None
    spans = {s.trace_id: s for s in f.spans}
    for r in measured:
        span = spans[r.trace_id]
        assert span.name == "llm_request"
        # vLLM 0.32 names a completions request's engine request per prompt: "-0" for ours.
        assert span.request_id == f"cmpl-{f.header.run_id}-{r.seq}-0"
    for row in joined["requests"]:
        assert 0 < row["outside_ttft"] < row["client_ttft"]
        assert row["client_tokens"] == row["server_tokens"] == 16


def test_launch_vllm_that_fails_to_start_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    t0 = time.monotonic()
    p = latbench(
        "run",
        "--launch-vllm",
        f"--model {missing} --max-model-len 2048",
        "--vllm-python",
        str(VLLM_PYTHON),
        "--requests",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    assert p.returncode == 1, p.stderr
    assert "vLLM exited with status" in p.stderr and "before it was ready" in p.stderr
    assert time.monotonic() - t0 < 240
    assert (run_dir(tmp_path / "out") / "vllm.log").exists()
