"""Interop with `vllm bench serve` (vLLM 0.32, vllm/benchmarks/serve.py): its flag names where
they mean what ours mean, and its results JSON (docs/vllm.md, "vllm bench serve").

Flags, and what they become here:

    --max-concurrency N      --concurrency N (closed loop: N users; with a rate: a cap)
    --request-rate R         --rate R (Poisson unless --mode says otherwise; `inf` = every
                             request at once: a closed loop of --max-concurrency users, or of
                             --num-prompts users without it, as vLLM sends them)
    --num-prompts N          --requests N (measured; --num-warmups come on top, as in vLLM)
    --num-warmups N          --warmup-requests N, added to --num-prompts: the first N requests
                             are sent and left out of the figures (vLLM sends N copies of its
                             first prompt and waits for them; here the load does not pause)
    --burstiness B           --burstiness B (the same gamma shape)
    --ramp-up-strategy S     --mode ramp, load.ramp.strategy (linear | exponential), with
    --ramp-up-start-rps R    load.ramp.start_rate and
    --ramp-up-end-rps R      load.ramp.end_rate: over --num-prompts as vLLM ramps (the rate
                             of the gap before request j is the rate at j / (N - 1)), or over
                             --duration when given; gamma gaps (--burstiness) as vLLM draws
                             them, unless --arrivals even
    --base-url URL           --target URL
    --input-len/--output-len --input-tokens/--output-tokens
    --dataset-name NAME      random: synthetic prompts (the default); prefix_repetition:
                             workload.source shared_prefix with preset vllm, and
      --prefix-repetition-prefix-len N    shared_prefix.prefix_tokens (default 256)
      --prefix-repetition-suffix-len N    shared_prefix.suffix_tokens (default 256)
      --prefix-repetition-num-prefixes N  shared_prefix.groups (default 10)
      --prefix-repetition-output-len N    --output-tokens (default 128; --output-len wins,
                                          as in vLLM)
    --header KEY=VALUE       --header 'KEY: VALUE' (both spellings are accepted)
    --label L                --name L (a scenario name: letters, digits, _ . -)
    --metadata KEY=VALUE ..  the spec's `metadata`, written as top-level keys of the results
    --temperature/--top-p/--top-k/--extra-body   the request body (`workload.extra_body`)
    --metric-percentiles P,..  --percentiles P,..
    --percentile-metrics M,..  which metrics the vLLM-format results list (ttft,tpot,itl,e2el,
                             client_queue_time, e2el_including_client_queue)
    --goodput ttft:100 ..    SLO thresholds in ms for goodput (p99 SLOs, not gating the exit)
    --save-result, --result-dir, --result-filename   write the vLLM-format results JSON
    --save-detailed          add the per-request arrays to it

Field definitions that match (METRICS.md): TTFT, TPOT, ITL and E2E ("e2el") are vLLM's own;
`client_queue_time` is our queue delay (`t_sent - t_intended`), `e2el_including_client_queue`
our E2E from schedule. Every figure is over latbench's measurement window (warm-up and
cool-down left out), which is vLLM's whole run when there is no warm-up. The per-request arrays
hold the measured requests in the order they were sent, failed ones included with zeros, as
vLLM writes them; `generated_texts` is not written, since records keep no text.
`max_output_tokens_per_s` and `max_concurrent_requests` are vLLM's one-second-bucket figures,
counted as vLLM counts them (one token per token-bearing event).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from latbench.records.record import Record, RecordsFile
from latbench.records.rundir import RunDir
from latbench.shared.errors import SpecError
from latbench.shared.units import to_ms
from latbench.spec import LoadSpec, load_spec
from latbench.spec.slo import DEFAULT_SLOS
from latbench.summary.samples import NS_PER_S, record_samples
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
# Our API kind -> vLLM's --backend that speaks it.
VLLM_BACKENDS: dict[str, str] = {
    "chat": "openai-chat",
    "completions": "openai",
    "responses": "openai-responses",
}
# vLLM's per-request arrays, in its order; all of them with --save-detailed, these two always.
PER_REQUEST_FIELDS: tuple[str, ...] = (
    "input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
    "errors",
)  # fmt: skip
ALWAYS_WRITTEN: frozenset[str] = frozenset({"latencies", "queue_times"})


def add_vllm_arguments(p: argparse.ArgumentParser) -> None:
    """The vLLM-only flags of `run` and `sweep` (the aliases sit on our own flags)."""
    g = p.add_argument_group("vllm bench serve compatibility (docs/vllm.md)")
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
        "--num-warmups",
        type=int,
        metavar="N",
        help="as in vllm bench serve: N requests before --num-prompts, left out of the figures",
    )
    g.add_argument(
        "--metadata",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="kept in the spec and written as top-level keys of the --save-result file",
    )
    g.add_argument(
        "--dataset-name",
        metavar="NAME",
        help="random (synthetic prompts, the default) or prefix_repetition (shared prefixes, "
        "workload.shared_prefix preset vllm; docs/workloads.md)",
    )
    for what, default in (("prefix-len", 256), ("suffix-len", 256), ("num-prefixes", 10)):
        g.add_argument(
            f"--prefix-repetition-{what}",
            type=int,
            metavar="N",
            help=f"with --dataset-name prefix_repetition (default {default})",
        )
    g.add_argument(
        "--prefix-repetition-output-len",
        type=int,
        metavar="N",
        help="with --dataset-name prefix_repetition: output tokens (default 128)",
    )
    g.add_argument(
        "--save-result", action="store_true", help="also write the results with vLLM's field names"
    )
    g.add_argument(
        "--save-detailed",
        action="store_true",
        help="with --save-result: add the per-request arrays (input_lens, output_lens, ttfts, "
        "itls, start_times, errors)",
    )
    g.add_argument("--result-dir", type=Path, metavar="DIR", help="where --save-result writes")
    g.add_argument(
        "--ramp-up-strategy",
        choices=["linear", "exponential"],
        help="ramp the request rate from --ramp-up-start-rps to --ramp-up-end-rps over the run "
        "(its requests, or its --duration); mode ramp, docs/workloads.md",
    )
    g.add_argument("--ramp-up-start-rps", type=float, metavar="R", help="the ramp's first rate")
    g.add_argument("--ramp-up-end-rps", type=float, metavar="R", help="the ramp's last rate")
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


def key_values(pairs: Sequence[str], flag: str) -> dict[str, str]:
    """`["a=1", "b = x"]` -> `{"a": "1", "b": "x"}` (vLLM's --metadata and --header form)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{flag} {pair!r}: write it as KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def apply_vllm_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """Fold the vLLM-only flags into spec data built from our own flags."""
    # No `load` section unless a flag fills one: an empty one would replace the spec's default
    # load (the demo's 15 s), which is what `latbench run` with no flags runs.
    load = data.get("load", {})
    warmups = getattr(ns, "num_warmups", None)
    if warmups is not None:
        if getattr(ns, "warmup_requests", None) is not None:
            raise SpecError("give --warmup-requests or --num-warmups, not both")
        if warmups < 0:
            raise SpecError(f"--num-warmups {warmups}: give 0 or more")
        # vLLM's --num-prompts counts the measured requests only; ours counts every request.
        load["warmup_requests"] = warmups
        if load.get("requests") is not None:
            load["requests"] += warmups
        data["load"] = load
    if getattr(ns, "metadata", None):
        data["metadata"] = {**data.get("metadata", {}), **key_values(ns.metadata, "--metadata")}
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
    dataset_flags(ns, data)
    ramp_flags(ns, load, data)
    if getattr(ns, "goodput", None):
        data["slos"] = goodput_slos(ns.goodput)
    # Fail before the run, not after it.
    parse_percentile_metrics(getattr(ns, "percentile_metrics", None))


# vLLM's --dataset-name values we take; its others name files or hubs (--sharegpt, --prompts).
DATASETS = ("random", "prefix_repetition")


def dataset_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--dataset-name and the --prefix-repetition-* flags (vLLM's PrefixRepetitionRandomDataset)
    into workload.shared_prefix with preset vllm, over what the spec and our flags set there."""
    name = getattr(ns, "dataset_name", None)
    # --prefix-repetition-X -> its shared_prefix key ("": the output length, not one of them).
    keys = {
        "prefix_len": "prefix_tokens",
        "suffix_len": "suffix_tokens",
        "num_prefixes": "groups",
        "output_len": "",
    }
    values = {k: getattr(ns, f"prefix_repetition_{k}", None) for k in keys}
    given = [k for k, v in values.items() if v is not None]
    if name is not None and name not in DATASETS:
        raise SpecError(
            f"--dataset-name {name!r}: latbench takes {' or '.join(DATASETS)}; for ShareGPT "
            "give --sharegpt FILE, for a prompt file --prompts FILE"
        )
    if name != "prefix_repetition":
        if given:
            flag = "--prefix-repetition-" + given[0].replace("_", "-")
            raise SpecError(f"{flag} is for --dataset-name prefix_repetition")
        return
    other = next((f"--{k}" for k in ("prompts", "sharegpt", "trace") if getattr(ns, k, None)), None)
    if other is not None:
        raise SpecError(
            f"--dataset-name prefix_repetition makes shared-prefix prompts and {other} another "
            "source of prompts: give one"
        )
    w = data.setdefault("workload", {})
    w.pop("path", None)  # a spec file's prompt file gives way, as its other fields do
    w.pop("trace", None)
    w["source"] = "shared_prefix"
    shape = {keys[k]: values[k] for k in given if keys[k]}
    w["shared_prefix"] = {**(w.get("shared_prefix") or {}), "preset": "vllm", **shape}
    out = values["output_len"]
    if out is not None and getattr(ns, "output_tokens", None) is None:  # vLLM: --output-len wins
        w["output_tokens"] = out


def ramp_flags(ns: argparse.Namespace, load: dict[str, Any], data: dict[str, Any]) -> None:
    """vLLM's --ramp-up-* flags into `load.ramp`, refused as vLLM refuses them (main_async's
    "Validate ramp-up arguments"), in its words where they fit."""
    strategy = getattr(ns, "ramp_up_strategy", None)
    start, end = getattr(ns, "ramp_up_start_rps", None), getattr(ns, "ramp_up_end_rps", None)
    if strategy is None:
        if start is not None or end is not None:
            raise SpecError(
                "--ramp-up-start-rps and --ramp-up-end-rps need --ramp-up-strategy "
                "(linear or exponential)"
            )
        return
    rate = getattr(ns, "rate", None)
    if rate is not None and not (math.isinf(rate) and rate > 0):  # inf is vLLM's default
        raise SpecError(
            "When using ramp-up, do not specify --request-rate. The request rate will be "
            "controlled by ramp-up parameters. Please remove the --request-rate argument."
        )
    if start is None or end is None:
        raise SpecError(
            "When using --ramp-up-strategy, both --ramp-up-start-rps and --ramp-up-end-rps "
            "must be specified"
        )
    if start < 0 or end < 0:
        raise SpecError("Ramp-up start and end RPS must be non-negative")
    if start > end:
        raise SpecError("Ramp-up start RPS must be less than end RPS")
    if strategy == "exponential" and start == 0:
        raise SpecError("For exponential ramp-up, the start RPS cannot be 0.")
    # A spec file's rate or stairs give way to the flags, as the flags win.
    load.pop("rate", None)
    load.pop("steps", None)
    load["mode"] = "ramp"
    load["ramp"] = {"strategy": strategy, "start_rate": start, "end_rate": end}
    # vLLM draws each gap from a gamma of --burstiness (1: Poisson) at the ramp's rate.
    load.setdefault("arrivals", "poisson")
    data["load"] = load


def ramp_fields(load: LoadSpec) -> dict[str, Any]:
    """The ramp keys of vLLM's results JSON, which it writes only for a ramp."""
    if load.mode != "ramp" or load.ramp is None:
        return {}
    r = load.ramp
    return {
        # Written in its place above (a key given again keeps its place in the dict).
        "burstiness": load.burstiness if load.arrivals == "poisson" else None,
        "ramp_up_strategy": r.strategy,
        "ramp_up_start_rps": r.start_rate,
        "ramp_up_end_rps": r.end_rate,
    }


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
    detailed: bool = False,
) -> dict[str, Any]:
    """The run in `vllm bench serve`'s results-JSON shape, from the records alone, its keys in
    vLLM's order; `detailed` adds the per-request arrays, as vLLM's --save-detailed does."""
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
    measured = sorted((r for r in f.records if r.phase == "measure"), key=lambda r: r.t_sent)
    if load.requests is not None:
        num_prompts = load.requests - load.warmup_requests - load.cooldown_requests
    else:
        num_prompts = len(measured)
    backend = VLLM_BACKENDS.get(spec.target.api, spec.target.api)
    out: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(wall / 1e9)),
        "endpoint_type": backend,
        "backend": backend,
        "label": spec.name,
        "model_id": env.get("model"),
        "tokenizer_id": getattr(spec.workload, "tokenizer", None),
        "num_prompts": num_prompts,
        # vLLM writes --metadata here, so the figures below win a clash of names.
        **spec.metadata,
        "request_rate": load.rate if load.open_loop and load.rate else "inf",
        "burstiness": load.burstiness if load.mode == "poisson" else None,
        "max_concurrency": load.concurrency,
        **ramp_fields(load),
        "duration": duration,
        "completed": summary.requests.succeeded,
        "failed": summary.requests.failed,
        "total_input_tokens": prompt_total,
        "total_output_tokens": summary.tokens.output_total,
        "request_throughput": rates.requests_per_s,
        # vLLM writes null unless --goodput was given; latbench's default SLOs are no ask.
        "request_goodput": None if spec.slos == list(DEFAULT_SLOS) else rates.goodput_per_s,
        "output_throughput": rates.output_tokens_per_s,
        "total_token_throughput": (
            None
            if prompt_total is None or duration is None or duration <= 0
            else (prompt_total + summary.tokens.output_total) / duration
        ),
    }
    per_request = request_arrays(measured)
    keep = PER_REQUEST_FIELDS if detailed else ALWAYS_WRITTEN
    out.update((k, v) for k, v in per_request.items() if k in keep)
    out.update(peak_figures(measured))
    out["rtfx"] = 0.0  # audio input seconds per second: none here
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


def request_arrays(measured: Sequence[Record]) -> dict[str, list[Any]]:
    """vLLM's per-request arrays, one entry per measured request, in seconds: a failed request
    has zeros where it measured nothing (vLLM's output_lens is 0 for every failed one).

    `input_lens` is the server's usage count, else the prompt length asked for, else 0 (a
    prompt file's prompt): vLLM starts each request's prompt_len at the length it asked for
    and overwrites it with usage.prompt_tokens when a chunk carries it, failed requests too
    (vllm/benchmarks/lib/endpoint_request_func.py)."""
    cols: dict[str, list[Any]] = {k: [] for k in PER_REQUEST_FIELDS}
    for r in measured:
        s = record_samples(r)
        ok = r.error is None
        asked = r.prompt_tokens if r.prompt_tokens is not None else 0
        cols["input_lens"].append(
            r.usage_prompt_tokens if r.usage_prompt_tokens is not None else asked
        )
        cols["output_lens"].append(s.n_out if ok else 0)
        cols["ttfts"].append(s.per_request["ttft"] or 0.0)
        cols["itls"].append(s.itl.tolist())
        cols["latencies"].append(s.per_request["e2e"] or 0.0)
        cols["start_times"].append(r.t_sent / NS_PER_S)
        cols["queue_times"].append(s.per_request["queue_delay"])
        cols["errors"].append("" if ok else _error_text(r))
    return cols


def _error_text(r: Record) -> str:
    kind = r.error.value if r.error is not None else "error"
    return f"{kind}: {r.error_detail}" if r.error_detail else kind


def peak_figures(measured: Sequence[Record]) -> dict[str, float | int]:
    """vLLM's `max_output_tokens_per_s` and `max_concurrent_requests`: the most token-bearing
    events, and requests in flight, in any one-second bucket counted from the first send of a
    succeeded request (calculate_metrics in vLLM's serve.py)."""
    ok = [r for r in measured if r.error is None and r.ev_t]
    if not ok:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    t0 = min(r.t_sent for r in ok)
    end = max(r.ev_t[-1] for r in ok)
    buckets = (end - t0) // NS_PER_S + 2
    tokens = np.zeros(buckets)
    users = np.zeros(buckets)
    for r in ok:
        np.add.at(tokens, (np.asarray(r.ev_t, dtype=np.int64) - t0) // NS_PER_S, 1)
        users[(r.t_sent - t0) // NS_PER_S : (r.ev_t[-1] - t0) // NS_PER_S + 1] += 1
    return {
        "max_output_tokens_per_s": float(tokens.max()),
        "max_concurrent_requests": int(users.max()),
    }


def save_vllm_result(ns: argparse.Namespace, records_path: Path) -> Path | None:
    """`run --save-result`: the vLLM-format file, computed from the run's records file."""
    run = RunDir.of_records(records_path)
    path = result_path(ns, run.path)
    if path is not None:
        metrics = parse_percentile_metrics(ns.percentile_metrics)
        doc = vllm_result(
            run.read_records(),
            percentile_metrics=metrics,
            detailed=getattr(ns, "save_detailed", False),
        )
        write_vllm_result(path, doc)
    return path


def write_vllm_result(path: Path, result: dict[str, Any] | list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
