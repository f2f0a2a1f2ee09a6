"""`vllm bench serve` interop: its flag names map onto our spec where the meanings match, and the
vLLM-format results JSON carries our figures under vLLM's field names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench import ErrorKind, SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.records import Record
from latbench.spec import RunSpec, load_spec
from latbench.vllm.interop import request_arrays

# A loaded test machine must not turn these runs client-bound (exit 4): their figures are not
# what is tested.
LOOSE = (
    "validity: {ttft_tolerance: 2s, itl_tolerance: 2s, loop_lag_p99: 2s, queue_delay_p99: 2s, "
    "client_cpu: 8}\n"
)


def spec_of(*argv: str) -> RunSpec:
    ns = build_parser().parse_args(["run", *argv])
    return load_spec(spec_from_args(ns), source="flags")


def test_vllm_flag_names_mean_what_they_mean_in_vllm() -> None:
    s = spec_of(
        "--base-url", "http://127.0.0.1:9/v1", "--max-concurrency", "4", "--request-rate", "10",
        "--burstiness", "0.5", "--num-prompts", "50", "--input-len", "256", "--output-len", "64",
        "--metric-percentiles", "50,99", "--goodput", "ttft:100", "e2el:2000",
    )  # fmt: skip
    assert s.target.base_url == "http://127.0.0.1:9"
    # A rate with --max-concurrency: Poisson arrivals (gamma with burstiness), capped in flight.
    assert (s.load.mode, s.load.rate, s.load.concurrency) == ("poisson", 10.0, 4)
    assert s.load.burstiness == 0.5 and s.load.requests == 50
    assert s.workload.input_tokens.mean == 256 and s.workload.output_tokens is not None
    assert s.workload.output_tokens.mean == 64
    assert s.percentiles == [50.0, 99.0]
    assert [str(x) for x in s.slos] == ["ttft:p99<=100ms", "e2e:p99<=2s"]


def test_an_infinite_request_rate_sends_every_prompt_at_once() -> None:
    # vLLM sends all prompts at time 0, at most --max-concurrency in flight: a closed loop.
    s = spec_of("--request-rate", "inf", "--num-prompts", "6")
    assert (s.load.mode, s.load.concurrency, s.load.rate) == ("closed", 6, None)
    s = spec_of("--request-rate", "inf", "--num-prompts", "60", "--max-concurrency", "8")
    assert (s.load.mode, s.load.concurrency) == ("closed", 8)


def test_vllms_header_metadata_label_warmup_and_sampling_flags() -> None:
    s = spec_of(
        "--header", "x-a=1", "b=c:d", "--header", "Authorization: Bearer k=v",
        "--label", "nightly", "--metadata", "tp=1", "version=0.32", "--metadata", "note = x",
        "--num-prompts", "20", "--num-warmups", "5",
        "--temperature", "0", "--top-p", "0.9", "--top-k", "5",
        "--extra-body", '{"top_k": 1, "chat_template_kwargs": {"enable_thinking": false}}',
    )  # fmt: skip
    # vLLM's KEY=VALUE and our 'Name: value': whichever separator comes first splits.
    assert s.target.headers == {"x-a": "1", "b": "c:d", "Authorization": "Bearer k=v"}
    assert s.name == "nightly"
    assert s.metadata == {"tp": "1", "version": "0.32", "note": "x"}
    # vLLM's --num-prompts counts measured requests; its warm-ups come on top.
    assert (s.load.requests, s.load.warmup_requests) == (25, 5)
    # Sampling flags are request fields; --extra-body wins a clash, as in vLLM.
    assert s.workload.extra_body == {
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 1,
        "chat_template_kwargs": {"enable_thinking": False},
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--request-rate", "inf", "--duration", "5s"), "give --num-prompts"),
        (("--concurrency", "2", "--max-concurrency", "3"), "not both"),
        (("--goodput", "ttft=100"), "METRIC:MILLISECONDS"),
        (("--goodput", "ttft:-5"), "METRIC:MILLISECONDS"),
        (("--percentile-metrics", "ttft,p99"), "unknown p99"),
        (("--header", "no-separator"), "'Name: value' or Name=value"),
        (("--metadata", "novalue"), "KEY=VALUE"),
        (("--num-warmups", "2", "--warmup-requests", "2"), "not both"),
        (("--extra-body", "{not json"), "--extra-body: not JSON"),
        (("--extra-body", "[1]"), "give a JSON object"),
        (("--extra-body", '{"max_tokens": 9}'), "extra_body cannot override"),
    ],
)
def test_bad_vllm_flags_are_named(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(*argv)


def test_save_result_writes_vllms_field_names_with_our_figures(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "run", "--spec", str(spec), "--out", str(tmp_path / "runs"), "--json",
        "--max-concurrency", "2", "--num-prompts", "12", "--input-len", "16", "--output-len", "8",
        "--metric-percentiles", "50,99", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--goodput", "ttft:100", "tpot:100", "--save-result", "--result-dir", str(tmp_path),
        "--result-filename", "vllm.json", "--sim", "ttft=0.02", "--sim", "itl=0.005",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr  # goodput SLOs do not gate the exit, as in vLLM
    s = json.loads(p.stdout)
    v = json.loads((tmp_path / "vllm.json").read_text())
    assert v["backend"] == "openai-chat" and v["model_id"] == "sim-model"
    assert v["request_rate"] == "inf" and v["max_concurrency"] == 2 and v["num_prompts"] == 12
    assert v["completed"] == s["requests"]["succeeded"] == 12 and v["failed"] == 0
    assert v["total_output_tokens"] == 12 * 8
    assert v["duration"] == pytest.approx(s["window"]["duration_s"], rel=1e-6)
    assert v["request_throughput"] == pytest.approx(s["rates"]["requests_per_s"], rel=1e-5)
    assert v["output_throughput"] == pytest.approx(s["rates"]["output_tokens_per_s"], rel=1e-5)
    assert v["request_goodput"] == pytest.approx(s["rates"]["goodput_per_s"], rel=1e-5)
    for vllm_name, ours in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2el", "e2e")):
        lat = s["latency"][ours]
        assert v[f"mean_{vllm_name}_ms"] == pytest.approx(lat["mean"] * 1e3, rel=1e-6)
        assert v[f"median_{vllm_name}_ms"] == pytest.approx(lat["p50"] * 1e3, rel=1e-6)
        assert v[f"std_{vllm_name}_ms"] == pytest.approx(lat["std"] * 1e3, rel=1e-5, abs=1e-6)
        assert v[f"p99_{vllm_name}_ms"] == pytest.approx(lat["p99"] * 1e3, rel=1e-6)
    assert v["latbench"]["slos"] == ["ttft:p99<=100ms", "tpot:p99<=100ms"]
    # Without --save-detailed, vLLM keeps only these per-request arrays.
    assert "ttfts" not in v and len(v["latencies"]) == len(v["queue_times"]) == 12
    # The same file from the records alone, later.
    (run_dir,) = (tmp_path / "runs").iterdir()
    again = tmp_path / "again.json"
    r = latbench(
        "report", str(run_dir), "--md", str(tmp_path / "r.md"), "--vllm-json", str(again),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(again.read_text()) == v


def test_save_detailed_writes_vllms_per_request_arrays(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "run", "--spec", str(spec), "--out", str(tmp_path / "runs"), "--json",
        "--max-concurrency", "2", "--num-prompts", "6", "--num-warmups", "3",
        "--input-len", "16", "--output-len", "5", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
        "--result-filename", "vllm.json", "--label", "nightly", "--metadata", "tp=1",
        "--header", "x-run=7", "--temperature", "0", "--top-k", "1",
        "--sim", "ttft=0.02", "--sim", "itl=0.005",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    v = json.loads((tmp_path / "vllm.json").read_text())
    # The 3 warm-ups were sent and left out: num_prompts and every array count the measured 6.
    assert s["requests"]["warmup"] == 3 and s["requests"]["measured"] == 6
    assert v["num_prompts"] == 6 and v["completed"] == 6
    assert v["label"] == "nightly" and v["tp"] == "1"
    assert v["request_goodput"] is None  # no --goodput: vLLM writes null
    fields = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times")
    for name in (*fields, "queue_times", "errors"):
        assert len(v[name]) == 6, name
    assert v["input_lens"] == [16] * 6 and v["output_lens"] == [5] * 6
    assert v["errors"] == [""] * 6
    assert v["start_times"] == sorted(v["start_times"])
    for ttft, itl, e2e in zip(v["ttfts"], v["itls"], v["latencies"], strict=True):
        assert len(itl) == 4  # one gap per token after the first, as vLLM's chunks here
        # vLLM's own identity: E2E = TTFT + the gaps; TPOT = (E2E - TTFT) / (N - 1).
        assert e2e == pytest.approx(ttft + sum(itl), abs=1e-9)
    tpots = [(e - t) / 4 for e, t in zip(v["latencies"], v["ttfts"], strict=True)]
    assert v["mean_tpot_ms"] == pytest.approx(1e3 * sum(tpots) / 6, rel=1e-9)
    assert v["mean_ttft_ms"] == pytest.approx(1e3 * sum(v["ttfts"]) / 6, rel=1e-9)
    gaps = [g for itl in v["itls"] for g in itl]
    assert v["mean_itl_ms"] == pytest.approx(1e3 * sum(gaps) / len(gaps), rel=1e-9)
    assert v["max_output_tokens_per_s"] == 30.0  # all 6 x 5 events inside the first second
    assert v["max_concurrent_requests"] == 6
    # The spec the records keep carries the sampling fields (into every body) and the header.
    (run_dir,) = (tmp_path / "runs").iterdir()
    header = json.loads((run_dir / "records.jsonl").read_text().splitlines()[0])
    assert header["spec"]["workload"]["extra_body"] == {"temperature": 0.0, "top_k": 1}
    assert header["spec"]["target"]["headers"] == {"x-run": "7"}


def test_input_lens_are_the_usage_count_else_the_length_asked_for() -> None:
    # As vLLM writes them: prompt_len starts at the length it asked for and takes
    # usage.prompt_tokens when the server reports it, failed requests included.
    ms = 1_000_000

    def rec(seq: int, **kw: object) -> Record:
        return Record(
            run_id="r", seq=seq, phase="measure", api="chat", t_intended=seq * ms,
            t_sent=seq * ms + (seq + 1) * 250_000, t_end=(seq + 40) * ms,
            ev_t=((seq + 20) * ms, (seq + 30) * ms), ev_kind="cc", **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    arrays = request_arrays(
        [
            rec(0, prompt_tokens=128, usage_prompt_tokens=131),  # the server's count wins
            rec(1, prompt_tokens=128),  # no usage: the length asked for
            rec(2, prompt_tokens=64, error=ErrorKind.CONNECTION_RESET),
            rec(3),  # a prompt file's prompt without usage: nothing known
        ]
    )
    assert arrays["input_lens"] == [131, 128, 64, 0]
    assert arrays["output_lens"] == [2, 2, 0, 2]
    # The queue delay, t_sent - t_intended: 0.25, 0.5, 0.75 and 1 ms.
    assert arrays["queue_times"] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3], abs=1e-15)
