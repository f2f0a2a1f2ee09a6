"""How the harness runs each tool for one point, and reads back what the tool itself reported.

Every tool gets the same load: closed loop, `streams` concurrent users, chat completions,
16-word prompts, exactly 128 output tokens (`ignore_eos`), a warm-up of `warmup_s` that it
excludes from its own figures, then `duration_s` of measurement. The figures read back are the
ones each tool shows its user (its headline p50/p99), so the error is what a user would see.

ITL has different meanings across tools (METRICS.md): latbench's and AIPerf's
`inter_chunk_latency` are pooled gaps between events, scored against the server's pooled gaps;
GuideLLM reports only a per-request mean gap, scored against the server's per-request mean gap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._peers import install, tokenizer_dir, venv_bin
from bench._procmon import TreeMonitor
from latbench.records.record import Record, read_records

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Point:
    name: str
    streams: int
    ttft_s: float
    itl_s: float
    duration_s: float
    warmup_s: float
    output_tokens: int = 128
    input_tokens: int = 16


@dataclass
class ToolRun:
    tool: str
    exit_code: int
    wall_s: float
    ttft_ms: dict[float, float]  # the tool's own p50, p99
    itl_ms: dict[float, float]
    itl_kind: str  # "pooled" (per gap) or "mean" (per request)
    monitor: TreeMonitor
    extra: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    records: list[Record] = field(default_factory=list)  # latbench's own, for decomposition


def _pcts(d: dict[str, Any], scale: float = 1.0) -> dict[float, float]:
    return {50.0: float(d["p50"]) * scale, 99.0: float(d["p99"]) * scale}


def _run(
    cmd: list[str],
    env: dict[str, str],
    out_dir: Path,
    timeout: float,
    preexec: Callable[[], None] | None = None,
) -> tuple[int, float, TreeMonitor]:
    log = (out_dir / "log.txt").open("w")
    t0 = time.monotonic()
    p = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out_dir, preexec_fn=preexec
    )
    mon = TreeMonitor(p.pid).start()
    try:
        code = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        code = p.wait()
    mon.stop()
    log.close()
    return code, time.monotonic() - t0, mon


def _clean_env() -> dict[str, str]:
    # AIPerf fails on a local tokenizer path when HF_HUB_OFFLINE=1 is set; GuideLLM needs nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env["NO_COLOR"] = "1"
    return env


def run_latbench(
    url: str,
    pt: Point,
    out_dir: Path,
    workers: int | None,
    preexec: Callable[[], None] | None = None,
) -> ToolRun:
    cmd = [
        sys.executable, "-m", "latbench", "run", "--target", url, "--api", "chat",
        "--concurrency", str(pt.streams), "--duration", f"{pt.duration_s + pt.warmup_s:g}s",
        "--warmup", f"{pt.warmup_s:g}s", "--output-tokens", str(pt.output_tokens),
        "--input-tokens", str(pt.input_tokens), "--out", str(out_dir), "--json",
        # The peers read no server metrics; neither does latbench here (and the farm's shared
        # port would reach one simulator process of several).
        "--server-metrics", "off",
    ]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = _clean_env()
    env["PYTHONPATH"] = str(ROOT)
    code, wall, mon = _run(cmd, env, out_dir, pt.duration_s + pt.warmup_s + 120, preexec)
    text = (out_dir / "log.txt").read_text()
    try:
        s = json.loads(text[text.index("{") :])
    except ValueError:
        return ToolRun("latbench", code, wall, {}, {}, "pooled", mon, log=text[-2000:])
    lat = s["latency"]
    if lat["ttft"].get("p50") is None:  # no request succeeded: nothing to score
        return ToolRun("latbench", code, wall, {}, {}, "pooled", mon, log=text[-2000:])
    records = read_records(next(out_dir.glob("*/records.jsonl"))).records
    return ToolRun(
        "latbench",
        code,
        wall,
        _pcts(lat["ttft"], 1e3),
        _pcts(lat["itl"], 1e3),
        "pooled",
        mon,
        extra={
            "client_bound": s["validity"]["client_bound"],
            "reasons": s["validity"]["reasons"],
            "loop_lag_p99_ms": (s["validity"]["loop_lag_p99_s"] or 0) * 1e3,
            "client_cpu": s["validity"]["client_cpu"],
            "error_bound": s["validity"].get("error_bound"),
        },
        records=records,
    )


def run_guidellm(url: str, pt: Point, out_dir: Path, workers: int | None) -> ToolRun:
    install("guidellm")
    scenario = {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": url,
                "model": "sim-model",
                "request_format": "/v1/chat/completions",
            },
            "profile": {
                "kind": "concurrent",
                "streams": [pt.streams],
                "warmup": {"mode": "duration", "value": pt.warmup_s},
            },
            "constraints": [{"kind": "max_duration", "seconds": pt.duration_s + pt.warmup_s}],
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer_dir())},
            "data": [
                {
                    "kind": "synthetic_text",
                    "prompt_tokens": pt.input_tokens,
                    "output_tokens": pt.output_tokens,
                }
            ],
            "outputs": [{"kind": "json", "path": str(out_dir / "guidellm.json")}],
        }
    }
    (out_dir / "scenario.json").write_text(json.dumps(scenario))
    cmd = [str(venv_bin("guidellm", "guidellm")), "run", "--scenario", "scenario.json",
           "--disable-progress"]  # fmt: skip
    code, wall, mon = _run(cmd, _clean_env(), out_dir, pt.duration_s + pt.warmup_s + 300)
    try:
        d = json.loads((out_dir / "guidellm.json").read_text())
        m = d["benchmarks"][0]["metrics"]
        ttft = _pcts(m["time_to_first_token_ms"]["successful"]["percentiles"])
        itl = _pcts(m["inter_token_latency_ms"]["successful"]["percentiles"])
    except (OSError, KeyError, IndexError, ValueError):
        return ToolRun("guidellm", code, wall, {}, {}, "mean", mon, log=_tail(out_dir))
    return ToolRun("guidellm", code, wall, ttft, itl, "mean", mon)


def run_aiperf(url: str, pt: Point, out_dir: Path, workers: int | None) -> ToolRun:
    install("aiperf")
    cmd = [
        str(venv_bin("aiperf", "aiperf")), "profile", "--model", "sim-model", "--url", url,
        "--endpoint-type", "chat", "--streaming", "--tokenizer", str(tokenizer_dir()),
        "--concurrency", str(pt.streams), "--benchmark-duration", f"{pt.duration_s:g}",
        "--warmup-duration", f"{pt.warmup_s:g}",
        "--synthetic-input-tokens-mean", str(pt.input_tokens),
        "--output-tokens-mean", str(pt.output_tokens), "--extra-inputs", "ignore_eos:true",
        "--artifact-dir", str(out_dir / "artifacts"), "--ui", "none",
    ]  # fmt: skip
    code, wall, mon = _run(cmd, _clean_env(), out_dir, pt.duration_s + pt.warmup_s + 300)
    try:
        d = json.loads((out_dir / "artifacts" / "profile_export_aiperf.json").read_text())
        ttft = _pcts(d["time_to_first_token"])
        itl = _pcts(d["inter_chunk_latency"])
    except (OSError, KeyError, ValueError):
        return ToolRun("aiperf", code, wall, {}, {}, "pooled", mon, log=_tail(out_dir))
    return ToolRun("aiperf", code, wall, ttft, itl, "pooled", mon)


def _tail(out_dir: Path) -> str:
    try:
        return (out_dir / "log.txt").read_text()[-2000:]
    except OSError:
        return ""


TOOLS: dict[str, Callable[[str, Point, Path, int | None], ToolRun]] = {
    "latbench": run_latbench,
    "guidellm": run_guidellm,
    "aiperf": run_aiperf,
}
