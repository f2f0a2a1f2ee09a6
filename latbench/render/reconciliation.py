"""Rendering a client/server reconciliation (latbench/summary/server_metrics.py) as terminal
tables, naming the server whose metrics they are (vLLM, SGLang, TGI, TensorRT-LLM, Dynamo)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.text import Text

from latbench.render.fit import Column, print_fitted
from latbench.shared.units import ms_short
from latbench.summary.server_metrics import Reconciliation, Side

LABELS = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "E2E"}
PHASE_LABELS = {
    "queue": "queue (waiting)",
    "prefill": "prefill",
    "decode": "decode",
    "inference": "inference",
    "time_per_token": "time per token (inference / tokens)",
}


def _label(r: Reconciliation, metric: str) -> str:
    # A server that observes ITL once per token is set against the client's ITL per token.
    return "ITL per token" if metric == "itl" and r.itl_per_token else LABELS[metric]


def _ms(seconds: float | None, sign: bool = False) -> str:
    # Whole milliseconds from 1 s up (the server's buckets are coarse there); a bucket's upper
    # bound can be +Inf.
    if seconds is not None and math.isinf(seconds):
        return "∞"
    return ms_short(seconds, sign=sign, whole_from=1_000)


def _bucket(side: Side, q: str) -> str:
    if q not in side.buckets_s:
        return "–"
    lo, hi = side.buckets_s[q]
    return f"({_ms(lo)}, {_ms(hi)}]"


def _range(bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return "–"
    lo, hi = bounds
    # "to", not "…": an ellipsis reads as a cut cell (render/fit.py).
    return f"{_ms(lo, sign=True)} to {_ms(hi, sign=True)}"


def render_reconciliation(r: Reconciliation, console: Console) -> None:
    console.print(
        Text(
            f"client vs server: {r.server}'s own metrics ({r.url}); the client completed "
            f"{r.client_requests} requests, the server counted {r.server_requests:g}"
        )
    )
    metric = [Column("metric", "left")]
    means, pcts = [], []
    for name, pair in r.pairs.items():
        means.append([
            _label(r, name),
            f"{pair.client.n:,.0f}",
            f"{pair.server.n:,.0f}",
            _ms(pair.client.mean_s),
            _ms(pair.server.mean_s),
            _ms(pair.mean_overhead_s, sign=True),
        ])  # fmt: skip
        pcts.append([
            _label(r, name),
            _ms(pair.client.quantiles_s.get("p50")),
            _bucket(pair.server, "p50"),
            _ms(pair.client.quantiles_s.get("p99")),
            _bucket(pair.server, "p99"),
            _range(pair.overhead_s.get("p99")),
        ])  # fmt: skip
    print_fitted(
        console,
        "means (ms, exact: both sides keep sums)",
        metric,
        [Column(c) for c in ("n client", "n server", "client", "server", "outside server")],
        means,
    )
    print_fitted(
        console,
        "percentiles (ms; the server's only as the bucket that holds it)",
        metric,
        [Column(c) for c in ("p50", "server", "p99", "server", "p99 outside")],
        pcts,
    )
    if (line := ttft_split_line(r)) is not None:
        console.print(Text(line))
    if r.missing:
        names = ", ".join(LABELS[m] for m in r.missing)
        console.print(
            Text(
                f"{r.server} exports no {names} histogram: "
                f"{'that figure is' if len(r.missing) == 1 else 'those figures are'} the "
                "client's alone (docs/servers.md)"
            )
        )
    if (line := prefix_cache_line(r)) is not None:
        console.print(Text(line))
    if r.phases:
        console.print(
            Text(
                "server phases, mean (p99 bucket) ms: "
                + "; ".join(
                    f"{PHASE_LABELS[k]} {_ms(v.mean_s)} {_bucket(v, 'p99')}"
                    for k, v in r.phases.items()
                )
            )
        )
    for name, t in r.tokens.items():
        client, server = t["client"], t["server"]
        agree = client is not None and server is not None and client == server
        mark = "[green]agree[/]" if agree else "[yellow]differ[/]"
        console.print(
            f"{name} tokens: client (usage) {_count(client)}, server {_count(server)}: {mark}",
            highlight=False,
        )
    for metric in ("ttft", "e2e"):
        pair = r.pairs.get(metric)
        if pair is None or not r.same_requests:
            continue
        if pair.below_server_at:
            at = ", ".join(_ms(b) for b in pair.below_server_at)
            console.print(
                f"[red]{LABELS[metric]}: the client has more requests than the server at or "
                f"under {at} ms: a client clock or record is wrong[/]",
                highlight=False,
            )
    if r.peak:
        console.print(
            "server peak during the run: " + ", ".join(f"{k} {v:g}" for k, v in r.peak.items()),
            highlight=False,
        )
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def ttft_split_line(r: Reconciliation) -> str | None:
    """Mean client TTFT split into the server's parts and the rest, naming only the parts the
    server measures (SGLang has no prefill histogram, Dynamo neither queue nor prefill)."""
    s = r.ttft_split_s
    if s is None:
        return None
    client, server = s["client_ttft"], s["server_ttft"]
    share = f"{server / client:.0%}: " if client and server is not None else ""
    parts = [f"{name} {_ms(s[name])}" for name in ("queue", "prefill") if s[name] is not None]
    # The spans' split (render/spans.py) names the same leftover the same (docs/metrics.md).
    rest = "front end" if len(parts) == 2 else f"the rest of {r.server}'s TTFT"
    parts.append(f"{rest} {_ms(s['server_other'])}")
    return (
        f"TTFT, mean {_ms(client)} ms = server {_ms(server)} ({share}{' + '.join(parts)}) + "
        f"outside the server {_ms(s['outside_server'])} (network, HTTP, framing, client)"
    )


def prefix_cache_line(r: Reconciliation) -> str | None:
    """The server's prefix-cache hit rate over the run, in words (terminal, HTML, Markdown);
    None when the server has no such counters, which is not a cache that never hit."""
    c = r.prefix_cache
    if c is None:
        return None
    if c["hit_rate"] is None:
        return "prefix cache: no prompt tokens looked up during the run"
    return (
        f"prefix cache: {c['hit_rate']:.1%} of prompt tokens hit ({_count(c['hits'])} of "
        f"{_count(c['queries'])} looked up, the server's counters over the run)"
    )


def summary_line(r: Reconciliation) -> str | None:
    """The server's TTFT and its prefix cache in one line, for reports that carry no tables of
    the reconciliation (Markdown)."""
    parts = []
    ttft = r.pairs.get("ttft")
    if ttft is not None and ttft.server.mean_s is not None:
        parts.append(
            f"server's mean TTFT {_ms(ttft.server.mean_s)} ms (client {_ms(ttft.client.mean_s)} ms)"
        )
    if (line := prefix_cache_line(r)) is not None:
        parts.append(line)
    return None if not parts else "Server metrics: " + "; ".join(parts) + "."


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"
