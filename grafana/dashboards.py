"""Generate latbench's Grafana dashboards (grafana/dashboards/*.json) with grafana-foundation-sdk.

    pip install '.[dashboards]'
    python grafana/dashboards.py           # rewrite grafana/dashboards/*.json
    python grafana/dashboards.py --check   # exit 1 if the committed JSON differs

Every latency panel is read against the 100 ms target: a threshold at 0.1 s colours values red
above it and draws the target line. Attainment panels (share of samples at or under 100 ms, from
the `le="0.1"` bucket over the count) turn red below 99%, the share a p99 <= 100 ms SLO needs.

Queries aggregate over target, model, api, scenario and location only (never job or instance),
so a run scraped directly and a run pushed through a Pushgateway show alike. The `location`
variable picks where the load came from (`local`, or the locations latbench serve's probe agents
registered with, docs/distributed.md), and the latency panels draw one line per location, so a
team reads TTFT against 100 ms as their users in each region see it. Time-series panels are
rates over `$__rate_interval` (the live view); the "latest run" stats read the cumulative
counters, which keep a run's whole-run figures even after its exporter is gone (pushed runs,
lingering CLI runs).

tests/deploy/test_grafana.py checks that the committed JSON equals this output, type-checks it
against Grafana's published schema (@grafana/schema, tsc --strict), and runs every query against
a real Prometheus.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.shared.generated import write_or_check

with warnings.catch_warnings():
    # The SDK warns, on import, that it prefers the v2 dashboard schema; provisioning from files
    # (and @grafana/schema's Dashboard type) is the v1 schema used here.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus as pq
    from grafana_foundation_sdk.builders import stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"

TARGET_S = 0.1
TARGET_LE = "0.1"  # the bucket boundary as latbench writes it
OBJECTIVE = 0.99  # attainment a p99 <= 100 ms SLO needs
# Validity (latbench.spec.slo.ValidityLimits): the error-bound tolerances decide; loop lag and
# CPU limits are proxies, used only while no bound is measured.
TTFT_TOLERANCE_S = 0.005
ITL_TOLERANCE_S = 0.001
LOOP_LAG_LIMIT_S = 0.001
QUEUE_DELAY_LIMIT_S = 0.010
CPU_LIMIT = 0.9

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'target=~"$target", model=~"$model", scenario=~"$scenario", location=~"$location"'
BY = "target, model, location"  # one line per target, model and location in the time series
WHO = "{{model}} @ {{target}} from {{location}}"
QUANTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
LATENCY = (
    ("ttft", "TTFT", "Time to first token: first token-bearing event minus send."),
    ("ttfo", "TTFO", "Time to first output: first content event minus send (skips reasoning)."),
    ("itl", "ITL", "Inter-token latency: every gap between token-bearing events, pooled."),
    ("tpot", "TPOT", "Time per output token after the first, one sample per request."),
    ("e2e", "E2E", "End to end: last token event minus send. The 100 ms line is for reference."),
)
SLO_METRICS = (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"))

# Grafana's named colours.
GREEN, RED, ORANGE = "green", "red", "orange"


def hist(key: str) -> str:
    return f"latbench_{key}_seconds"


# ---------------------------------------------------------------------------------------------
# PromQL


def quantile_rate(key: str, q: float, sel: str = SEL, by: str = BY) -> str:
    return (
        f"histogram_quantile({q:g}, sum by ({by}, le) "
        f"(rate({hist(key)}_bucket{{{sel}}}[$__rate_interval])))"
    )


def quantile_total(key: str, q: float) -> str:
    """Over the whole (latest) run: the cumulative buckets, no rate."""
    return f"histogram_quantile({q:g}, sum by ({BY}, le) ({hist(key)}_bucket{{{SEL}}}))"


def attainment_rate(key: str) -> str:
    return (
        f'sum by ({BY}) (rate({hist(key)}_bucket{{{SEL}, le="{TARGET_LE}"}}[$__rate_interval]))'
        f" / sum by ({BY}) (rate({hist(key)}_count{{{SEL}}}[$__rate_interval]))"
    )


def attainment_range(key: str) -> str:
    return (
        f'sum by ({BY}) (increase({hist(key)}_bucket{{{SEL}, le="{TARGET_LE}"}}[$__range]))'
        f" / sum by ({BY}) (increase({hist(key)}_count{{{SEL}}}[$__range]))"
    )


def attainment_total(key: str) -> str:
    return (
        f'sum by ({BY}) ({hist(key)}_bucket{{{SEL}, le="{TARGET_LE}"}})'
        f" / sum by ({BY}) ({hist(key)}_count{{{SEL}}})"
    )


def rate(metric: str, extra: str = "", by: str = BY) -> str:
    sel = SEL + (f", {extra}" if extra else "")
    return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"


# vLLM's own metrics, matched on the model: vLLM labels it model_name.
VLLM_SEL = 'model_name=~"$model"'


def vllm_series(metric: str) -> str:
    """A selector for one of vLLM's `vllm:` metrics that also matches `vllm_`: prometheus_client
    (0.26 seen here) writes sample names with `_` for `:` when Prometheus negotiates OpenMetrics,
    so the same server can be stored under either name."""
    name = metric.removeprefix("vllm:")
    return f'{{__name__=~"vllm[:_]{name}", {VLLM_SEL}}}'


def vllm_mean(metric: str) -> str:
    """Exact over the rate window: vLLM's histograms keep sums."""
    return (
        f"sum by (model_name) (rate({vllm_series(metric + '_sum')}[$__rate_interval]))"
        f" / sum by (model_name) (rate({vllm_series(metric + '_count')}[$__rate_interval]))"
    )


def vllm_quantile(metric: str, q: float) -> str:
    return (
        f"histogram_quantile({q:g}, sum by (model_name, le) "
        f"(rate({vllm_series(metric + '_bucket')}[$__rate_interval])))"
    )


# ---------------------------------------------------------------------------------------------
# Panels


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str
    instant: bool = False  # one value at the range's end (for `[$__range]` windows)


def _query(ref: str, q: Q) -> pq.Dataquery:
    query = pq.Dataquery().ref_id(ref).expr(q.expr).legend_format(q.legend)
    return query.instant() if q.instant else query.range()


def _steps(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def over(limit: float) -> db.ThresholdsConfig:
    """Green up to `limit`, red above it: latencies against their target."""
    return _steps((None, GREEN), (limit, RED))


def under(objective: float) -> db.ThresholdsConfig:
    """Red below `objective`, green from it: attainment and goodput shares."""
    return _steps((None, RED), (objective, GREEN))


def _refs() -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def series_panel(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    thresholds: db.ThresholdsConfig,
    *,
    width: int = 12,
    height: int = 8,
    minimum: float | None = None,
    maximum: float | None = None,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .thresholds(thresholds)
        # The target drawn as a line, with the side past it shaded in the threshold's colour.
        .thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE_AND_AREA)
        )
        .line_width(1)
        .fill_opacity(0)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .span(width)
        .height(height)
    )
    if minimum is not None:
        p = p.min(minimum)
    if maximum is not None:
        p = p.max(maximum)
    for ref, q in zip(_refs(), queries, strict=False):
        p = p.with_target(_query(ref, q))
    return p


def stat_panel(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    thresholds: db.ThresholdsConfig,
    *,
    width: int = 4,
    height: int = 5,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .decimals(3 if unit == "s" else 2)
        .thresholds(thresholds)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
        # The last value in the time range: after a run ends (or for a pushed run) that is the
        # run's final, whole-run figure.
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .span(width)
        .height(height)
    )
    for ref, q in zip(_refs(), queries, strict=False):
        p = p.with_target(_query(ref, q))
    return p


def variables() -> list[db.QueryVariable | db.DatasourceVariable]:
    def label_var(name: str, query: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(name)
            .datasource(DS)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    return [
        db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        label_var("target", "label_values(latbench_requests_total, target)"),
        label_var("model", 'label_values(latbench_requests_total{target=~"$target"}, model)'),
        label_var(
            "scenario",
            'label_values(latbench_requests_total{target=~"$target", model=~"$model"}, scenario)',
        ),
        label_var(
            "location",
            'label_values(latbench_requests_total{target=~"$target", model=~"$model", '
            'scenario=~"$scenario"}, location)',
        ),
    ]


def base(uid: str, title: str, description: str) -> db.Dashboard:
    d = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["latbench", "llm", "latency"])
        .editable()
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .links(
            [
                db.DashboardLink("latbench")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags(["latbench"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            ]
        )
    )
    for v in variables():
        d = d.with_variable(v)
    return d


def latency_dashboard() -> db.Dashboard:
    d = base(
        "latbench-latency",
        "latbench: latency against 100 ms",
        "Client-side streaming latency measured by latbench (TTFT, TTFO, ITL, TPOT, E2E), each "
        "against the 100 ms target, with throughput, errors and the client's own validity.",
    )
    d = d.with_row(db.Row("Latest run: whole-run figures against 100 ms"))
    for key, name in SLO_METRICS:
        d = d.with_panel(
            stat_panel(
                f"{name} p99",
                f"p99 of every {name} sample of the latest run, from its cumulative histogram "
                "(bucket resolution). Red above 100 ms.",
                [Q(quantile_total(key, 0.99), WHO)],
                "s",
                over(TARGET_S),
            )
        )
    for key, name in SLO_METRICS:
        d = d.with_panel(
            stat_panel(
                f"{name} share <= 100 ms",
                f"Share of the latest run's {name} samples at or under 100 ms (exact: the "
                '`le="0.1"` bucket over the count). Red below 99%.',
                [Q(attainment_total(key), WHO)],
                "percentunit",
                under(OBJECTIVE),
            )
        )

    d = d.with_row(db.Row("Latency quantiles over time (p50, p90, p99)"))
    for key, name, desc in LATENCY:
        d = d.with_panel(
            series_panel(
                f"{name} p50 / p90 / p99",
                f"{desc} Quantiles over each $__rate_interval, interpolated within buckets "
                "(finer ones near 100 ms). Red above the 100 ms line.",
                [Q(quantile_rate(key, q), f"{label} {WHO}") for q, label in QUANTILES],
                "s",
                over(TARGET_S),
                width=12 if key != "e2e" else 24,
            )
        )

    d = d.with_row(db.Row("SLO attainment: share of samples at or under 100 ms"))
    d = d.with_panel(
        series_panel(
            "Share <= 100 ms over time",
            'Per target, model and location: the `le="0.1"` bucket over the count, over each '
            "$__rate_interval. Red below 99% (what p99 <= 100 ms needs).",
            [Q(attainment_rate(key), f"{name} {WHO}") for key, name in SLO_METRICS],
            "percentunit",
            under(OBJECTIVE),
            width=16,
            minimum=0,
            maximum=1,
        )
    )
    d = d.with_panel(
        stat_panel(
            "Share <= 100 ms, whole time range",
            "Over the dashboard's time range ($__range). Red below 99%.",
            [Q(attainment_range(key), f"{name} {WHO}", instant=True) for key, name in SLO_METRICS],
            "percentunit",
            under(OBJECTIVE),
            width=8,
            height=8,
        )
    )

    d = d.with_row(db.Row("Throughput and goodput"))
    d = d.with_panel(
        series_panel(
            "Requests/s and goodput/s",
            "Succeeded measured requests per second, and those that met every SLO of their run "
            "(goodput). The gap between the two lines is requests that missed an SLO.",
            [
                Q(rate("latbench_requests_total", 'outcome="ok"'), f"ok {WHO}"),
                Q(rate("latbench_good_requests_total"), f"good {WHO}"),
            ],
            "reqps",
            _steps((None, GREEN)),
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Goodput share",
            "Requests that met every SLO over all finished measured requests (failed ones "
            "count as not meeting it). Red below 99%.",
            [
                Q(
                    f"{rate('latbench_good_requests_total')} / {rate('latbench_requests_total')}",
                    WHO,
                )
            ],
            "percentunit",
            under(OBJECTIVE),
            width=8,
            minimum=0,
            maximum=1,
        )
    )
    d = d.with_panel(
        series_panel(
            "Output tokens/s",
            "Output tokens (N_out) of succeeded measured requests, per second.",
            [Q(rate("latbench_output_tokens_total"), WHO)],
            "short",
            _steps((None, GREEN)),
            width=8,
        )
    )

    d = d.with_row(db.Row("Errors and load"))
    d = d.with_panel(
        series_panel(
            "Errors by kind (/s)",
            "Failed measured requests per second, by kind (HTTP status, timeouts, resets, "
            "malformed or cut streams...). Anything above 0 is red.",
            [Q(rate("latbench_errors_total", by="kind"), "{{kind}}")],
            "reqps",
            _steps((None, GREEN), (1e-9, RED)),
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "In flight",
            "Requests sent and not finished, and runs in progress.",
            [
                Q(f"sum by ({BY}) (latbench_inflight_requests{{{SEL}}})", f"in flight {WHO}"),
                Q(f"sum by ({BY}) (latbench_run_active{{{SEL}}})", f"active runs {WHO}"),
            ],
            "short",
            _steps((None, GREEN)),
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Warm-up and cool-down requests (/s, not measured)",
            "Requests outside the measurement window: they feed no latency panel.",
            [Q(rate("latbench_excluded_requests_total", by="phase"), "{{phase}}")],
            "reqps",
            _steps((None, GREEN)),
            width=8,
        )
    )

    d = offered_rate_panels(d)
    d = d.with_row(db.Row("Client validity: a slow server or a saturated client?"))
    d = validity_panels(d)
    return d


def offered_rate_panels(d: db.Dashboard) -> db.Dashboard:
    """TTFT against the rate the schedule offers: a ramp or a staircase (`load.mode: ramp`,
    `steps`) read as the load rises, where TTFT leaves the 100 ms line."""
    d = d.with_row(db.Row("Latency against the offered rate (ramps and staircases)"))
    panel = series_panel(
        "TTFT p99 against the offered rate",
        "TTFT p99 over each $__rate_interval (left axis, red above 100 ms) beside the rate the "
        "open-loop schedule offers at each instant, latbench_offered_rate (a ramp's or a "
        "stair's rate; 0 in closed loop), and the measured requests finishing per second "
        "(right axis). Where finished falls below offered, the server no longer keeps up.",
        [
            Q(quantile_rate("ttft", 0.99), f"TTFT p99 {WHO}"),
            Q(f"sum by ({BY}) (latbench_offered_rate{{{SEL}}})", f"offered req/s {WHO}"),
            Q(rate("latbench_requests_total"), f"finished req/s {WHO}"),
        ],
        "s",
        over(TARGET_S),
        width=24,
    )
    # The rates on their own axis, in req/s, without the latency target's shading.
    rate_axis = [
        dm.DynamicConfigValue(id_val="unit", value="reqps"),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        dm.DynamicConfigValue(id_val="custom.thresholdsStyle", value={"mode": "off"}),
    ]
    for ref in ("B", "C"):
        panel = panel.override_by_query(ref, rate_axis)
    return d.with_panel(panel)


def validity_panels(d: db.Dashboard) -> db.Dashboard:
    for key, name, tolerance in (
        ("ttft", "TTFT", TTFT_TOLERANCE_S),
        ("itl", "ITL", ITL_TOLERANCE_S),
    ):
        d = d.with_panel(
            series_panel(
                f"{name} error bound p50 / p99",
                f"How far each {name} sample's stamps may be off, as the client measured it "
                f"(late reads, late sends). Above the {tolerance * 1e3:g} ms tolerance (red) at "
                "p99 the run is client-bound: its figures may be off by that much.",
                [
                    Q(quantile_rate(f"{key}_error_bound", 0.5), f"p50 {WHO}"),
                    Q(quantile_rate(f"{key}_error_bound", 0.99), f"p99 {WHO}"),
                ],
                "s",
                over(tolerance),
                width=12,
            )
        )
    d = d.with_panel(
        series_panel(
            "Event-loop lag p50 / p99",
            "How late the client's event loop ran a 100 Hz ticker: a diagnostic that explains "
            "an error bound. Above 1 ms (red) it judges a run only when no bound is measured.",
            [
                Q(quantile_rate("event_loop_lag", 0.5), f"p50 {WHO}"),
                Q(quantile_rate("event_loop_lag", 0.99), f"p99 {WHO}"),
            ],
            "s",
            over(LOOP_LAG_LIMIT_S),
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Send lag (queue delay) p50 / p99",
            "Actual send minus intended send. Open loop: above 10 ms (red) the client fell "
            "behind its schedule. Closed loop: a diagnostic, near 0 unless the client is "
            "overloaded.",
            [
                Q(quantile_rate("queue_delay", 0.5), f"p50 {WHO}"),
                Q(quantile_rate("queue_delay", 0.99), f"p99 {WHO}"),
            ],
            "s",
            over(QUEUE_DELAY_LIMIT_S),
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Client CPU (cores)",
            "CPU the latbench process used, in cores. Its event loop runs on one core: above "
            "0.9 (red) it has no time to spare. A diagnostic; it judges a run only when no "
            "error bound is measured.",
            [Q(rate("latbench_client_cpu_seconds_total"), WHO)],
            "short",
            over(CPU_LIMIT),
            width=8,
            minimum=0,
        )
    )
    return d


def client_vs_server_dashboard() -> db.Dashboard:
    d = base(
        "latbench-client-vs-server",
        "latbench: client vs server (vLLM)",
        "latbench's client-side figures next to the server's own vLLM histograms for the same "
        "model. Needs Prometheus to scrape the vLLM server too (deploy/prometheus/prometheus.yml, "
        "job vllm). The gap is network, HTTP and client time.",
    )
    pairs = (
        ("ttft", "TTFT", "vllm:time_to_first_token_seconds"),
        ("itl", "ITL", "vllm:inter_token_latency_seconds"),
        ("e2e", "E2E", "vllm:e2e_request_latency_seconds"),
    )
    d = d.with_row(db.Row("Client (latbench) vs server (vLLM), 100 ms target"))
    for key, name, vllm in pairs:
        d = d.with_panel(
            series_panel(
                f"{name}: client vs server",
                f"p50 and p99 of latbench's {name} (client, measured from the send) and of "
                f"vLLM's {vllm} (server, from arrival at the engine). Both use vLLM's bucket "
                "boundaries. Red above 100 ms.",
                [
                    Q(quantile_rate(key, 0.5, by="model"), "client p50 {{model}}"),
                    Q(quantile_rate(key, 0.99, by="model"), "client p99 {{model}}"),
                    Q(vllm_quantile(vllm, 0.5), "server p50 {{model_name}}"),
                    Q(vllm_quantile(vllm, 0.99), "server p99 {{model_name}}"),
                ],
                "s",
                over(TARGET_S),
                width=12 if key != "e2e" else 24,
            )
        )
    client_ttft = (
        f"{rate(hist('ttft') + '_sum', by='model')} / {rate(hist('ttft') + '_count', by='model')}"
    )
    server_ttft = vllm_mean("vllm:time_to_first_token_seconds")
    # Client and server label the model differently (model, model_name): the gap is taken over
    # the selected models together, which is one model when $model picks one.
    gap = (
        f"(sum(rate({hist('ttft')}_sum{{{SEL}}}[$__rate_interval]))"
        f" / sum(rate({hist('ttft')}_count{{{SEL}}}[$__rate_interval])))"
        f" - (sum(rate({vllm_series('vllm:time_to_first_token_seconds_sum')}[$__rate_interval]))"
        f" / sum(rate({vllm_series('vllm:time_to_first_token_seconds_count')}[$__rate_interval])))"
    )
    d = d.with_panel(
        series_panel(
            "TTFT split (means)",
            "Mean TTFT at the client and in vLLM, vLLM's queue and prefill means, and what lies "
            "outside the server (client mean minus server mean: the network, HTTP and framing on "
            "both sides, the client). Means are exact from the histograms' sums, and they add "
            "up; percentiles do not (docs/vllm.md).",
            [
                Q(client_ttft, "client TTFT {{model}}"),
                Q(server_ttft, "server TTFT {{model_name}}"),
                Q(vllm_mean("vllm:request_queue_time_seconds"), "server queue {{model_name}}"),
                Q(vllm_mean("vllm:request_prefill_time_seconds"), "server prefill {{model_name}}"),
                Q(gap, "outside the server (selected models)"),
            ],
            "s",
            over(TARGET_S),
            width=24,
        )
    )
    d = span_panels(d)
    d = d.with_row(db.Row("Who sets the pace?"))
    d = d.with_panel(
        series_panel(
            "Server queue (vLLM)",
            "Requests vLLM is running and keeping waiting. A growing queue with a healthy client "
            "means the server is the bottleneck.",
            [
                Q(f"sum by (model_name) ({vllm_series('vllm:num_requests_running')})", "running"),
                Q(f"sum by (model_name) ({vllm_series('vllm:num_requests_waiting')})", "waiting"),
            ],
            "short",
            _steps((None, GREEN)),
            width=12,
        )
    )
    d = d.with_panel(
        series_panel(
            "Client in flight",
            "Requests latbench has sent and not finished.",
            [Q(f"sum by ({BY}) (latbench_inflight_requests{{{SEL}}})", WHO)],
            "short",
            _steps((None, GREEN)),
            width=12,
        )
    )
    d = validity_panels(d)
    d = gpu_panels(d)
    return d


def _mean(key: str) -> str:
    return f"{rate(hist(key) + '_sum', by='model')} / {rate(hist(key) + '_count', by='model')}"


def span_panels(d: db.Dashboard) -> db.Dashboard:
    """Per request, from the server's own spans (vLLM with --otlp-traces-endpoint, joined to
    latbench's records by trace id; docs/vllm.md): exact per-request differences, so their
    percentiles are the outside time's own, not a bucket interval of two histograms."""
    d = d.with_row(db.Row("Per request: the server's spans joined to latbench's records"))
    d = d.with_panel(
        series_panel(
            "TTFT split per request (means)",
            "Over the requests joined to their server span: the server's TTFT, its queue and "
            "prefill, and what lay outside the server (each request's client TTFT minus its "
            "server TTFT). Empty when the server exports no spans.",
            [
                Q(_mean("server_ttft"), "server TTFT {{model}}"),
                Q(_mean("server_queue"), "queue {{model}}"),
                Q(_mean("server_prefill"), "prefill {{model}}"),
                Q(_mean("outside_ttft"), "outside the server {{model}}"),
            ],
            "s",
            over(TARGET_S),
            width=12,
        )
    )
    d = d.with_panel(
        series_panel(
            "Outside the server per request (p50, p99)",
            "Percentiles of each request's client TTFT minus its server TTFT: the client, HTTP, "
            "network and framing (vLLM's TTFT already holds its chat template and tokenising). "
            "Each request's difference is exact, but these "
            "percentiles are histogram_quantile's estimates from buckets fine from 0.1 ms: on "
            "loopback, where every difference is under 0.1 ms, they only interpolate within "
            "the first bucket. The exact percentiles are in results.json (server_spans).",
            [
                Q(quantile_rate("outside_ttft", 0.5, by="model"), "p50 {{model}}"),
                Q(quantile_rate("outside_ttft", 0.99, by="model"), "p99 {{model}}"),
            ],
            "s",
            over(TARGET_S),
            width=6,
        )
    )
    d = d.with_panel(
        series_panel(
            "Spans matched",
            "Requests joined to a server span, requests whose span never came, spans with no "
            "request of the run, and trace ids seen twice, per second. Anything but matched "
            "means the per-request split covers fewer requests than the run.",
            [Q(rate("latbench_spans_total", by="match"), "{{match}}")],
            "reqps",
            _steps((None, GREEN)),
            width=6,
            minimum=0,
        )
    )
    return d


def gpu_panels(d: db.Dashboard) -> db.Dashboard:
    """The GPU as latbench sampled it during its runs (NVML on the GPU host, or a DCGM
    exporter's page; docs/gpu.md), and the energy each output token cost."""
    d = d.with_row(db.Row("GPU and energy"))
    gpu_who = "GPU {{gpu}} {{model}}"
    d = d.with_panel(
        series_panel(
            "Energy per output token",
            "Joules the GPUs used per output token delivered: the rate of latbench's energy "
            "counter over the rate of its output tokens, both over the measured requests only "
            "(the warm-up and cool-down left out, as in results.json's energy). Idle power is "
            "in it.",
            [
                Q(
                    f"{rate('latbench_energy_joules_total', by='model')}"
                    f" / {rate('latbench_output_tokens_total', by='model')}",
                    "J/token {{model}}",
                )
            ],
            "joule",
            _steps((None, GREEN)),
            width=6,
            minimum=0,
        )
    )
    d = d.with_panel(
        series_panel(
            "GPU utilisation",
            "Share of the sample period a kernel ran on each GPU (NVML, DCGM_FI_DEV_GPU_UTIL).",
            [Q(f"max by (gpu, model) (latbench_gpu_utilization_ratio{{{SEL}}})", gpu_who)],
            "percentunit",
            _steps((None, GREEN)),
            width=6,
            minimum=0,
            maximum=1,
        )
    )
    d = d.with_panel(
        series_panel(
            "GPU power",
            "Each GPU's power draw, watts.",
            [Q(f"max by (gpu, model) (latbench_gpu_power_watts{{{SEL}}})", gpu_who)],
            "watt",
            _steps((None, GREEN)),
            width=6,
            minimum=0,
        )
    )
    d = d.with_panel(
        series_panel(
            "GPU memory used",
            "Each GPU's memory in use (the KV cache and the weights).",
            [Q(f"max by (gpu, model) (latbench_gpu_memory_used_bytes{{{SEL}}})", gpu_who)],
            "bytes",
            _steps((None, GREEN)),
            width=6,
            minimum=0,
        )
    )
    return d


DASHBOARDS = {
    "latbench-latency.json": latency_dashboard,
    "latbench-client-vs-server.json": client_vs_server_dashboard,
}


# Interval-variable settings that grafana-foundation-sdk 0.0.21 writes on every variable;
# Grafana's schema (@grafana/schema VariableModel) has no such fields, so the schema check
# rejects them on query and datasource variables.
_INTERVAL_ONLY = ("auto", "auto_count", "auto_min")


def _fix_up(d: dict[str, Any]) -> dict[str, Any]:
    # Grafana wants a unique id per panel; the SDK leaves them unset (rows get 0).
    for i, panel in enumerate(d.get("panels", []), start=1):
        panel["id"] = i
    for var in d.get("templating", {}).get("list", []):
        if var.get("type") != "interval":
            for key in _INTERVAL_ONLY:
                var.pop(key, None)
    return d


def render(builder: db.Dashboard) -> str:
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return json.dumps(_fix_up(model), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as on import, above
        return {OUT_DIR / name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(outputs, __doc__.split("\n")[0], "python grafana/dashboards.py", argv)


if __name__ == "__main__":
    sys.exit(main())
