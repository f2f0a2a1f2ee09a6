"""Interop with `vllm bench serve`: its flag names where they mean what ours mean, and its
results-JSON field names for the metrics whose definitions match ours (docs/sweeps.md, "Interop").

Flags, and what they become here:

    --max-concurrency N      --concurrency N (closed loop: N users; with a rate: a cap)
    --request-rate R         --rate R (Poisson unless --mode says otherwise; `inf` = every
                             request at once: a closed loop of --max-concurrency users, or of
                             --num-prompts users without it, as vLLM sends them)
    --num-prompts N          --requests N
    --burstiness B           --burstiness B (the same gamma shape)
    --base-url URL           --target URL
    --input-len/--output-len --input-tokens/--output-tokens
    --metric-percentiles P,..  --percentiles P,..
    --percentile-metrics M,..  which metrics the vLLM-format results list (ttft,tpot,itl,e2el,
                             client_queue_time, e2el_including_client_queue)
    --goodput ttft:100 ..    SLO thresholds in ms for goodput (p99 SLOs, not gating the exit)
    --save-result, --result-dir, --result-filename   write the vLLM-format results JSON

Field definitions that match (METRICS.md): TTFT, TPOT, ITL and E2E ("e2el") are vLLM's own;
`client_queue_time` is our queue delay (`t_sent - t_intended`), `e2el_including_client_queue`
our E2E from schedule. Every figure is over latbench's measurement window (warm-up and
cool-down left out), which is vLLM's whole run when there is no warm-up. vLLM's
`max_output_tokens_per_s` and `max_concurrent_requests` count one token per SSE chunk in
one-second buckets, which is not a latbench metric, so they are not written.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from latbench.records.record import RecordsFile
from latbench.records.rundir import RunDir
from latbench.shared.errors import SpecError
from latbench.shared.units import to_ms
from latbench.spec import load_spec
from latbench.summary.summary import summarize_file

# vLLM's percentile-metric name -> latbench's metric name (same definition).
VLLM_METRICS: dict[str, str] = {
    "ttft": "ttft",
    "tpot": "tpot",
    "itl": "itl",
    "e2el": "e2e",
    "client_queue_time": "queue_delay",
    "e2el_including_client_queue": "e2e_from_schedule",
}
DEFAULT_PERCENTILE_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl")  # vLLM's default
DEFAULT_RESULT_FILENAME = "vllm-results.json"


def add_vllm_arguments(p: argparse.ArgumentParser) -> None:
    """The vLLM-only flags of `run` and `sweep` (the aliases sit on our own flags)."""
    g = p.add_argument_group("vllm bench serve compatibility (docs/sweeps.md)")
    g.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="as in vllm bench serve: --concurrency N (users; with a rate, a cap)",
    )
    g.add_argument(
        "--percentile-metrics",
        metavar="M,M,..",
        help="metrics in the vLLM-format results: ttft,tpot,itl,e2el,client_queue_time,"
        "e2el_including_client_queue (default ttft,tpot,itl)",
    )
    g.add_argument(
        "--goodput",
        nargs="+",
        metavar="METRIC:MS",
        help="goodput SLOs in ms, e.g. --goodput ttft:100 tpot:100 (set the SLOs; do not gate "
        "the exit status, as in vLLM)",
    )
    g.add_argument(
        "--save-result", action="store_true", help="also write the results with vLLM's field names"
    )
    g.add_argument("--result-dir", type=Path, metavar="DIR", help="where --save-result writes")
    g.add_argument(
        "--result-filename",
        metavar="NAME",
        help=f"file name for --save-result (default {DEFAULT_RESULT_FILENAME} in the run's "
        "directory)",
    )


def parse_percentile_metrics(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_PERCENTILE_METRICS
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in VLLM_METRICS]
    if unknown or not names:
        raise SpecError(
            f"--percentile-metrics {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
            f"allowed: {','.join(VLLM_METRICS)}"
        )
    return names


def goodput_slos(pairs: Sequence[str]) -> list[str]:
    """`["ttft:100", "e2el:2000"]` (vLLM: metric, milliseconds) -> our SLO strings."""
    out = []
    for pair in pairs:
        name, sep, value = pair.partition(":")
        metric = VLLM_METRICS.get(name.strip(), name.strip())
        try:
            ms = float(value)
        except ValueError:
            ms = math.nan
        if not sep or not math.isfinite(ms) or ms < 0:
            raise SpecError(
                f"--goodput {pair!r}: write METRIC:MILLISECONDS, e.g. ttft:100 tpot:100"
            )
        out.append(f"{metric}:p99<={ms:g}ms")
    return out


def apply_vllm_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """Fold the vLLM-only flags into spec data built from our own flags."""
    # No `load` section unless a flag fills one: an empty one would replace the spec's default
    # load (the demo's 15 s), which is what `latbench run` with no flags runs.
    load = data.get("load", {})
    if getattr(ns, "max_concurrency", None) is not None:
        if ns.concurrency is not None:
            raise SpecError("give --concurrency or --max-concurrency, not both")
        load["concurrency"] = ns.max_concurrency
        data["load"] = load
    rate = load.get("rate")
    if isinstance(rate, float) and math.isinf(rate) and rate > 0:
        # vLLM's default: every prompt at time 0, at most --max-concurrency in flight. That is a
        # closed loop of that many users, or of one user per prompt.
        del load["rate"]
        load["mode"] = "closed"
        if "concurrency" not in load:
            if load.get("requests") is None:
                raise SpecError(
                    "--request-rate inf sends every prompt at once: give --num-prompts "
                    "(or --max-concurrency)"
                )
            load["concurrency"] = load["requests"]
    if getattr(ns, "goodput", None):
        data["slos"] = goodput_slos(ns.goodput)
    # Fail before the run, not after it.
    parse_percentile_metrics(getattr(ns, "percentile_metrics", None))


def result_path(ns: argparse.Namespace, run_dir: Path) -> Path | None:
    """Where `--save-result` writes, or None when no vLLM-format file was asked for."""
    if not (ns.save_result or ns.result_dir or ns.result_filename):
        return None
    name = ns.result_filename or DEFAULT_RESULT_FILENAME
    return (ns.result_dir or run_dir) / name


def _p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def vllm_result(
    f: RecordsFile,
    *,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    percentiles: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The run in `vllm bench serve`'s results-JSON shape, from the records alone."""
    header = f.header
    spec = load_spec(header.spec if header else {}, source="records header")
    pcts = list(percentiles) if percentiles is not None else list(spec.percentiles)
    # The median is always written (median_*_ms), whatever percentiles were asked for.
    summary = summarize_file(f, spec.model_copy(update={"percentiles": sorted({*pcts, 50.0})}))
    env = header.environment if header else {}
    load = spec.load
    wall = header.clock_wall_ns if header else time.time_ns()
    rates = summary.rates
    duration = summary.window.duration_s if summary.window else None
    prompt_total = summary.tokens.prompt_total
    out: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(wall / 1e9)),
        "endpoint_type": "openai-chat" if spec.target.api == "chat" else "openai",
        "backend": "openai-chat" if spec.target.api == "chat" else "openai",
        "label": spec.name,
        "model_id": env.get("model"),
        "tokenizer_id": None,
        "num_prompts": load.requests if load.requests is not None else len(f.records),
        "request_rate": load.rate if load.open_loop else "inf",
        "burstiness": load.burstiness if load.mode == "poisson" else None,
        "max_concurrency": load.concurrency,
        "duration": duration,
        "completed": summary.requests.succeeded,
        "failed": summary.requests.failed,
        "total_input_tokens": prompt_total,
        "total_output_tokens": summary.tokens.output_total,
        "request_throughput": rates.requests_per_s,
        "request_goodput": rates.goodput_per_s,
        "output_throughput": rates.output_tokens_per_s,
        "total_token_throughput": (
            None
            if prompt_total is None or duration is None or duration <= 0
            else (prompt_total + summary.tokens.output_total) / duration
        ),
    }
    for name in percentile_metrics:
        stats = summary.latency[VLLM_METRICS[name]]
        out[f"mean_{name}_ms"] = to_ms(stats.mean)
        out[f"median_{name}_ms"] = to_ms(stats.p(50.0))
        out[f"std_{name}_ms"] = to_ms(stats.std)
        for p in pcts:
            out[f"p{_p_word(p)}_{name}_ms"] = to_ms(stats.p(p))
    out["latbench"] = {
        "run_id": header.run_id if header else None,
        "slos": [str(s) for s in spec.slos],  # request_goodput counts requests meeting these
        "mode": load.mode,
        "window_excludes_warmup": True,
        "client_bound": summary.client_bound,
    }
    return out


def save_vllm_result(ns: argparse.Namespace, records_path: Path) -> Path | None:
    """`run --save-result`: the vLLM-format file, computed from the run's records file."""
    run = RunDir.of_records(records_path)
    path = result_path(ns, run.path)
    if path is not None:
        metrics = parse_percentile_metrics(ns.percentile_metrics)
        write_vllm_result(path, vllm_result(run.read_records(), percentile_metrics=metrics))
    return path


def write_vllm_result(path: Path, result: dict[str, Any] | list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
