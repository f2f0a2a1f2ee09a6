"""`python -m bench.otlp_cost`: what `--otlp-metrics` costs, on the runner's loop and per export.

Per record: the Prometheus sink's `add`, the only per-record work an OTLP export adds to a run
(it reads the state that sink writes; before issue 17's rework an OTLP sink recorded every sample
again on the OpenTelemetry SDK's instruments, about 3.7 ms per 128-event record). Per export:
building the `ExportMetricsServiceRequest` from a full state and serialising it, on the
exporter's own thread, and for comparison the Prometheus text of the same state (a scrape).
Records of 128 token events with per-event stamps, as a streaming run writes them; best of 5.
Pure CPU; no network.
"""

from __future__ import annotations

import argparse
import timeit

from latbench.exporter import LatbenchMetrics, RunLabels, render_text
from latbench.exporter.otlp import OtlpExposition
from latbench.records import Record
from latbench.sinks.prometheus import PrometheusSink

MS = 1_000_000


def record(seq: int, events: int) -> Record:
    t = 1_000 * MS + seq * 10 * MS
    ev = [t + 30 * MS + i * 5 * MS + (seq * 7 + i * 13) % 3_000_000 for i in range(events)]
    return Record(
        run_id="r",
        seq=seq,
        phase="measure",
        api="chat",
        t_intended=t,
        t_sent=t + 20_000,
        t_headers=t + MS,
        t_end=ev[-1] + 100_000,
        status=200,
        ev_t=ev,
        ev_n=None,
        ev_late=[(i * 37) % 200_000 for i in range(events)],
        sent_late=0,
        usage_completion_tokens=events,
        usage_prompt_tokens=64,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--events", type=int, default=128)
    p.add_argument("--label-sets", type=int, default=1, help="series in the state (service)")
    a = p.parse_args()
    metrics = LatbenchMetrics()
    records = [record(i, a.events) for i in range(a.records)]
    sinks = [
        PrometheusSink(metrics, RunLabels(f"http://gpu-{k}:8000", "m", "chat", "s"), [])
        for k in range(a.label_sets)
    ]
    sink = sinks[0]

    def add_all() -> None:
        for r in records:
            sink.add(r)

    best = min(timeit.repeat(add_all, number=1, repeat=5))
    print(f"per record ({a.events} events): Prometheus sink add {best / a.records * 1e6:.0f} us")
    for s in sinks[1:]:
        for r in records:
            s.add(r)
    for temporality in ("cumulative", "delta"):
        exposition = OtlpExposition(metrics, temporality)

        def export(exposition: OtlpExposition = exposition) -> int:
            n = len(exposition.request().SerializeToString())
            exposition.accepted()
            return n

        size = export()
        best = min(timeit.repeat(export, number=20, repeat=5)) / 20
        print(
            f"one OTLP export, {a.label_sets} label set(s), {temporality}: "
            f"{best * 1e3:.2f} ms, {size / 1024:.0f} KiB protobuf"
        )
    best = min(timeit.repeat(lambda: render_text(metrics), number=20, repeat=5)) / 20
    print(f"one Prometheus text exposition of the same state: {best * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
