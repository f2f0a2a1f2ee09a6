"""`vllm bench serve` beside latbench: vLLM's own benchmark client, run from vLLM's Python
(`VllmBench`), and its per-request results read back as latbench records (`vllm_records`).

Why records, and not a comparison of vLLM's arrays as they are: `compare` (summary/compare.py)
resamples runs of records, keeps each request's gaps together, and takes several runs a side;
and each metric's arithmetic lives once, in summary/samples.py. A vLLM request becomes a record
whose instants are vLLM's own stamps (its send, `start + ttft`, then each `itl` gap in turn), so
latbench recomputes TTFT, ITL, TPOT and E2E from vLLM's stamps by its own definitions. That
splits the two questions a parity check asks: do the definitions agree (our figures from vLLM's
stamps equal the ones vLLM prints: `definition_gaps`), and do the two clients measure the same
server alike (compare's verdicts on vLLM's records against latbench's).

What the records cannot hold is what vLLM does not keep: the kind of each chunk (all are
content), per-chunk token counts (the request's `output_lens` is its N_out, as vLLM's TPOT
uses), and anything of a failed request but its error text.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

import numpy as np

from latbench.records.record import CONTENT, Record, instants
from latbench.shared.errors import ErrorKind, LatbenchError
from latbench.summary.samples import NS_PER_S, Samples

CHILD = Path(__file__).with_name("bench_child.py")
# vLLM's --backend -> our API kind.
VLLM_APIS: Mapping[str, str] = {
    "openai-chat": "chat",
    "openai": "completions",
    "vllm": "completions",
    "openai-responses": "responses",
}


class VllmBench:
    """`vllm bench serve` in one long-lived child of vLLM's Python (latbench/vllm/bench_child.py):
    `run(argv)` is one benchmark, `prompts(argv, path)` writes the prompts its dataset sends."""

    def __init__(self, python: str, log: IO[str] | None = None) -> None:
        self._python = python
        self._log = log
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [self._python, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the child ends at the end of its input
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise LatbenchError("VllmBench is used outside its `with` block")
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise LatbenchError(f"vllm bench serve's process ended (exit {proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise LatbenchError(f"vllm bench serve: {reply['error']}")
        return reply

    def run(self, argv: Sequence[str]) -> dict[str, Any]:
        """One `vllm bench serve ARGV`: the results dict its main returns (with --save-detailed,
        the per-request arrays too)."""
        result: dict[str, Any] = self._ask({"op": "bench", "argv": list(argv)})["result"]
        return result

    def prompts(self, argv: Sequence[str], path: Path) -> int:
        """Write the prompts ARGV's dataset sends as latbench's JSONL; how many."""
        n: int = self._ask({"op": "prompts", "argv": list(argv), "path": str(path)})["prompts"]
        return n

    def metrics(self, result: Mapping[str, Any], percentiles: Sequence[float]) -> dict[str, Any]:
        """vLLM's own `calculate_metrics` over a results file's per-request arrays (latbench's
        --save-detailed ones too): its BenchmarkMetrics as a dict (`mean_ttft_ms`, ...,
        `percentiles_ttft_ms` as [p, value] pairs)."""
        doc = {"op": "metrics", "result": dict(result), "percentiles": list(percentiles)}
        metrics: dict[str, Any] = self._ask(doc)["metrics"]
        return metrics


def vllm_records(result: Mapping[str, Any], run_id: str = "vllm") -> list[Record]:
    """vLLM's per-request arrays (--save-detailed) as measured records, one a request."""
    need = ("start_times", "ttfts", "itls", "output_lens", "input_lens", "errors")
    missing = [k for k in need if k not in result]
    if missing:
        raise LatbenchError(
            f"vLLM's results lack {', '.join(missing)}: run vllm bench serve with --save-detailed"
        )
    api = VLLM_APIS.get(str(result.get("backend")), str(result.get("backend")))
    arrays = {k: result[k] for k in need}
    arrays["queue_times"] = result.get("queue_times") or [0.0] * len(result["start_times"])
    not_lists = [k for k, v in arrays.items() if not isinstance(v, list)]
    if not_lists:
        raise LatbenchError(f"vLLM's results: {', '.join(not_lists)} not a list")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        # One entry a request in every array, or a request's stamps would be another's.
        raise LatbenchError(
            "vLLM's per-request arrays differ in length: "
            + ", ".join(f"{k} {n}" for k, n in lengths.items())
        )
    out = []
    rows = zip(*arrays.values(), strict=True)
    for seq, (start, ttft, itl, n_out, n_in, error, q) in enumerate(rows):
        t_sent = round(start * NS_PER_S)
        t_intended = t_sent - round(q * NS_PER_S)
        if error:
            out.append(
                Record.unanswered(
                    run_id,
                    seq,
                    "measure",
                    api,
                    t_intended,
                    t_sent,
                    ErrorKind.CLIENT_ERROR,
                    f"vllm bench serve: {str(error).strip()[-200:]}",
                )
            )
            continue
        # Cumulative in seconds, then rounded once: the instants vLLM's client stamped.
        ev_t = [round((start + t) * NS_PER_S) for t in np.cumsum([ttft, *itl])]
        out.append(
            Record(
                run_id,
                seq,
                "measure",
                api,
                t_intended,
                t_sent,
                t_end=ev_t[-1],
                ev_t=instants(ev_t),
                ev_kind=CONTENT * len(ev_t),
                status=200,
                usage_prompt_tokens=int(n_in),
                usage_completion_tokens=int(n_out),
            )
        )
    return out


def definition_gaps(result: Mapping[str, Any], records: Sequence[Record]) -> dict[str, float]:
    """Our figure from vLLM's stamps minus the figure vLLM printed, relative, for each of
    mean TTFT, TPOT, ITL and E2E that vLLM wrote (0 where the definitions agree; vLLM's stamps
    are rounded to the nanosecond here, so expect about 1e-9)."""
    s = Samples.build([r for r in records if r.error is None])
    ours = {
        "ttft": s.per_request["ttft"],
        "tpot": s.per_request["tpot"],
        "itl": s.gaps["itl"],
        "e2el": s.per_request["e2e"],
    }
    gaps = {}
    for name, samples in ours.items():
        theirs = result.get(f"mean_{name}_ms")
        values = samples[~np.isnan(samples)]
        if theirs is None or not values.size or not theirs:
            continue
        gaps[name] = float(values.mean() * 1e3 / theirs - 1.0)
    return gaps
