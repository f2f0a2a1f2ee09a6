"""A sweep's lines on the console as its steps finish."""

from __future__ import annotations

from rich.console import Console

from latbench.shared.units import ms_short
from latbench.sweep.steps import Step


def print_step(console: Console, s: Step) -> None:
    sm = s.summary
    lat = sm.latency

    def p99(metric: str) -> str:
        v = lat[metric].p(99.0)
        return ms_short(v) + ("" if v is None else " ms")

    style = {"pass": "green", "fail": "red", "client-bound": "bold red"}[s.verdict.outcome]
    rps = sm.rates.requests_per_s
    console.print(
        f"  [{style}]{s.verdict.outcome}[/]: {0 if rps is None else rps:.3g} req/s, p99 TTFT "
        f"{p99('ttft')}, ITL {p99('itl')}, TPOT {p99('tpot')}"
        + ("" if not s.verdict.reasons else f" ({'; '.join(s.verdict.reasons)})"),
        highlight=False,
    )
