"""vLLM's per-request arrays read back as records (latbench.vllm.peer.vllm_records): the records
carry vLLM's own stamps, so our arithmetic over them gives vLLM's figures; and latbench's own
--save-detailed arrays, read back the same way, give latbench's figures again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench import LatbenchError
from latbench.summary.samples import Samples
from latbench.vllm.peer import definition_gaps, vllm_records

LOOSE = (
    "validity: {ttft_tolerance: 2s, itl_tolerance: 2s, loop_lag_p99: 2s, queue_delay_p99: 2s, "
    "client_cpu: 8}\n"
)


def vllm_like(itls: list[list[float]], errors: list[str]) -> dict[str, object]:
    """Per-request arrays as vLLM's serve.py writes them, and the means it prints from them."""
    n = len(itls)
    ttfts = [0.05 + 0.01 * i for i in range(n)]
    ok = [i for i in range(n) if not errors[i]]
    lat = [ttfts[i] + sum(itls[i]) if not errors[i] else 0.0 for i in range(n)]
    out_lens = [len(itls[i]) + 1 if not errors[i] else 0 for i in range(n)]
    tpots = [(lat[i] - ttfts[i]) / (out_lens[i] - 1) for i in ok if out_lens[i] > 1]
    gaps = [g for i in ok for g in itls[i]]
    return {
        "backend": "openai",
        "start_times": [1000.0 + i for i in range(n)],
        "queue_times": [0.001] * n,
        "ttfts": [t if not e else 0.0 for t, e in zip(ttfts, errors, strict=True)],
        "itls": [itl if not e else [] for itl, e in zip(itls, errors, strict=True)],
        "latencies": lat,
        "output_lens": out_lens,
        "input_lens": [128] * n,
        "errors": errors,
        "mean_ttft_ms": 1e3 * sum(ttfts[i] for i in ok) / len(ok),
        "mean_tpot_ms": 1e3 * sum(tpots) / len(tpots),
        "mean_itl_ms": 1e3 * sum(gaps) / len(gaps),
        "mean_e2el_ms": 1e3 * sum(lat[i] for i in ok) / len(ok),
    }


def test_vllms_arrays_become_records_with_vllms_stamps() -> None:
    doc = vllm_like([[0.01, 0.02, 0.005], [0.03], [], [0.01, 0.01]], ["", "", "", "boom"])
    records = vllm_records(doc)
    assert [r.ok for r in records] == [True, True, True, False]
    first = records[0]
    assert first.api == "completions" and first.t_sent == 1000 * 10**9
    assert first.t_sent - first.t_intended == 10**6  # vLLM's client queue time
    assert [t - first.t_sent for t in first.ev_t] == [
        50_000_000,
        60_000_000,
        80_000_000,
        85_000_000,
    ]
    assert first.usage_completion_tokens == 4 and first.usage_prompt_tokens == 128
    assert records[3].error_detail == "vllm bench serve: boom"
    # Our arithmetic over vLLM's stamps gives what vLLM printed (one token: no TPOT, as vLLM).
    gaps = definition_gaps(doc, records)
    assert set(gaps) == {"ttft", "tpot", "itl", "e2el"}
    assert all(abs(g) < 1e-9 for g in gaps.values()), gaps


def test_results_without_per_request_arrays_are_named() -> None:
    with pytest.raises(LatbenchError, match="--save-detailed"):
        vllm_records({"backend": "openai", "latencies": [0.1], "queue_times": [0.0]})


def test_per_request_arrays_of_different_lengths_are_named() -> None:
    doc = vllm_like([[0.01], [0.02], [0.03]], ["", "", ""])
    doc["ttfts"] = [0.05, 0.06]  # one request's TTFT lost: the rest would shift onto others
    with pytest.raises(LatbenchError, match=r"differ in length: start_times 3, ttfts 2, "):
        vllm_records(doc)
    doc = vllm_like([[0.01], [0.02]], ["", ""])
    doc["queue_times"] = [0.0]
    with pytest.raises(LatbenchError, match=r"queue_times 1$"):
        vllm_records(doc)
    doc = vllm_like([[0.01]], [""])
    doc["itls"] = 7
    with pytest.raises(LatbenchError, match="itls not a list"):
        vllm_records(doc)


def test_latbenchs_detailed_results_read_back_give_its_figures(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "run", "--spec", str(spec), "--out", str(tmp_path / "runs"), "--json",
        "--concurrency", "3", "--requests", "12", "--input-len", "16", "--output-len", "6",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--save-detailed",
        "--result-dir", str(tmp_path), "--result-filename", "v.json",
        "--sim", "ttft=0.02", "--sim", "itl=0.004",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)["latency"]
    s = Samples.build(vllm_records(json.loads((tmp_path / "v.json").read_text())))
    for ours, name in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2e")):
        assert s.per_request[name].mean() == pytest.approx(summary[ours]["mean"], rel=1e-6)
    assert s.gaps["itl"].mean() == pytest.approx(summary["itl"]["mean"], rel=1e-6)
    assert s.gaps["itl"].size == summary["itl"]["count"] == 12 * 5
