"""A run whose records file carries the server's spans, for the tests of what latbench shows of
them (terminal, Markdown, CSV, HTML), made as a user makes one: `latbench run --otlp-receiver`
against a simulator child process that exports vLLM's span of every request (sim/spans.py) to
that receiver. The run's own receiver decodes the spans and writes them into the records file;
nothing here touches them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.cli import latbench
from kit.sim import FAST
from latbench.sim import SimConfig, SimProcess
from latbench.vllm.launch import free_port


def run_with_spans(out: Path, *run_args: str, **sim: Any) -> Path:
    """`latbench run RUN_ARGS --otlp-receiver 127.0.0.1:PORT` against a tracing simulator
    (SimConfig fields `sim`, FAST unless told) that sends its spans to PORT; the run directory.
    Its results.json holds the join the run made."""
    port = free_port()
    config = SimConfig.model_validate(
        {
            **FAST,
            "otlp_traces_endpoint": f"http://127.0.0.1:{port}/v1/traces",
            "span_delay_s": 0.05,
            **sim,
        }
    )
    with SimProcess(config) as proc:
        p = latbench(
            "run", "--out", str(out), "--target", proc.url, "--otlp-receiver",
            f"127.0.0.1:{port}", *run_args,
        )  # fmt: skip
        assert p.returncode in (0, 4), p.stderr  # 4: client-bound on a busy machine
    (records,) = out.glob("*/records.jsonl")
    return records.parent
