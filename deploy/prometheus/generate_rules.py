"""Generate latbench's Prometheus recording and alerting rules (the YAML under rules/).

    python deploy/prometheus/generate_rules.py          # rewrite rules/*.yml
    python deploy/prometheus/generate_rules.py --check  # exit 1 if the committed files differ

The rules are written from Python, not by hand, because they are one pattern over many metrics
and windows; metric names come from `latbench.exporter`, so a renamed metric cannot leave a
rule behind. tests/deploy/test_rules.py checks that the committed files equal this output, and
runs `promtool check rules` and `promtool test rules` (deploy/prometheus/tests/) on them.

Naming: `scenario:<metric>:<operation>`, where the level `scenario` means "aggregated to the
label set (target, model, api, scenario, location)": instance and job are summed away, so a run
scraped directly and one pushed through a Pushgateway give the same series, and each location a
probe runs from (docs/distributed.md) keeps its own quantiles, attainment and alerts: a region
whose users miss 100 ms pages even while the others meet it.

SLOs: 99% of TTFT, ITL and TPOT samples at or under 100 ms (METRICS.md: the default target, and
attainment = share of samples at or under it), so the error budget is 1%. Burn-rate alerts follow
the multi-window, multi-burn-rate pattern of Google's SRE workbook ("Alerting on SLOs"): an alert
needs both a long window (enough evidence) and a short one (it is still happening, so the alert
resolves minutes after a burst ends rather than an hour later).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from latbench.exporter import LABELS, PREFIX
from latbench.shared.generated import write_or_check

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
RECORDING_FILE = RULES_DIR / "latbench-recording.yml"
ALERTS_FILE = RULES_DIR / "latbench-alerts.yml"

BY = ", ".join(LABELS)  # the aggregation of every rule: one series per label set
LEVEL = "scenario"

TARGET_S = 0.1
TARGET_LE = "0.1"  # the bucket boundary, as the exporter writes it (floatToGoString(0.1))
OBJECTIVE = 0.99  # share of samples at or under the target
BUDGET = round(1 - OBJECTIVE, 6)

# Quantiles and attainment for the dashboards' metrics, at the dashboards' default resolution.
LATENCY = ("ttft", "ttfo", "itl", "tpot", "e2e")
QUANTILES = (0.5, 0.9, 0.99)
WIN = "1m"  # the dashboards' default resolution

# (alert suffix, long window, short window, burn-rate factor, severity). 14.4 over 1 h spends 2%
# of a 30-day budget in that hour; 6 over 6 h spends 5%. Short windows are 1/12 of long ones.
SLO_METRICS = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT"}
BURN_ALERTS = (
    ("Fast", "1h", "5m", 14.4, "page"),
    ("Slow", "6h", "30m", 6.0, "ticket"),
)
SLO_WINDOWS = ("5m", "30m", "1h", "6h")

# Client validity (METRICS.md, "Validity of the measurement"; limits: latbench.spec.slo). The
# verdict is the measured error bound against its tolerance; loop lag and CPU judge only runs
# that measured no bound (no kernel stamps), as proxies. The verdict's open-loop checks (send
# lag p99 over 10 ms, unsent requests) have no alert: no series says whether a run was open
# loop, and in closed loop send lag is the concurrency limit doing its job (a diagnostic), so an
# alert on it would flag runs the verdict passes. Its p99 stays recorded, for the dashboards.
TOLERANCES = {"ttft": ("TTFT", 0.005), "itl": ("ITL", 0.001)}
LOOP_LAG_LIMIT_S = 0.001
CPU_LIMIT = 0.9
SATURATION_WINDOW = "5m"
SATURATION_FOR = "2m"


def hist(key: str) -> str:
    return f"{PREFIX}_{key}_seconds"


def quantile_rule(key: str, q: float, window: str) -> str:
    return f"{LEVEL}:{hist(key)}:p{q * 100:g}_rate{window}"


def attainment_rule(key: str, window: str) -> str:
    return f"{LEVEL}:{hist(key)}:attainment_le{TARGET_LE.replace('.', '_')}_rate{window}"


def miss_ratio_rule(key: str, window: str) -> str:
    return f"{LEVEL}:{PREFIX}_{key}_slo_miss:ratio_rate{window}"


def cpu_rule(window: str) -> str:
    return f"{LEVEL}:{PREFIX}_client_cpu:ratio_rate{window}"


def quantile_expr(key: str, q: float, window: str) -> str:
    return f"histogram_quantile({q:g}, sum by ({BY}, le) (rate({hist(key)}_bucket[{window}])))"


def attainment_expr(key: str, window: str) -> str:
    return (
        f'sum by ({BY}) (rate({hist(key)}_bucket{{le="{TARGET_LE}"}}[{window}]))'
        f" / sum by ({BY}) (rate({hist(key)}_count[{window}]))"
    )


def rule(record: str, expr: str) -> dict[str, Any]:
    return {"record": record, "expr": expr}


def recording_groups() -> list[dict[str, Any]]:
    dash: list[dict[str, Any]] = []
    for key in LATENCY:
        for q in QUANTILES:
            dash.append(rule(quantile_rule(key, q, WIN), quantile_expr(key, q, WIN)))
        dash.append(rule(attainment_rule(key, WIN), attainment_expr(key, WIN)))
    dash.append(
        rule(
            f"{LEVEL}:{PREFIX}_goodput:ratio_rate{WIN}",
            f"sum by ({BY}) (rate({PREFIX}_good_requests_total[{WIN}]))"
            f" / sum by ({BY}) (rate({PREFIX}_requests_total[{WIN}]))",
        )
    )
    dash += validity_rules(WIN)
    return [{"name": "latbench-dashboards", "rules": dash}]


def validity_rules(window: str) -> list[dict[str, Any]]:
    out = [
        rule(quantile_rule(key, 0.99, window), quantile_expr(key, 0.99, window))
        for key in ("event_loop_lag", "queue_delay", "ttft_error_bound", "itl_error_bound")
    ]
    # CPU seconds per second: the share of one core (asyncio runs on one).
    out.append(
        rule(cpu_rule(window), f"sum by ({BY}) (rate({PREFIX}_client_cpu_seconds_total[{window}]))")
    )
    return out


def alert_groups() -> list[dict[str, Any]]:
    """Each alert sits in one group after the rules it reads: a group runs its rules in order
    at one timestamp, so the alert sees this evaluation's ratios, not the previous ones (groups
    run independently of each other)."""
    burn: list[dict[str, Any]] = []
    for key in SLO_METRICS:
        for w in SLO_WINDOWS:
            # 1 - attainment: the share of samples over the target, i.e. errors against the SLO.
            burn.append(rule(miss_ratio_rule(key, w), f"1 - ({attainment_expr(key, w)})"))
    for key, name in SLO_METRICS.items():
        for suffix, long_w, short_w, factor, severity in BURN_ALERTS:
            threshold = f"({factor:g} * {BUDGET:g})"
            burn.append(
                {
                    "alert": f"Latbench{name}BudgetBurn{suffix}",
                    "expr": f"{miss_ratio_rule(key, long_w)} > {threshold}"
                    f" and {miss_ratio_rule(key, short_w)} > {threshold}",
                    "labels": {"severity": severity, "slo": key},
                    "annotations": {
                        "summary": f"{name} SLO (99% <= 100 ms) error budget burning "
                        f"{factor:g}x too fast",
                        "description": (
                            f"{{{{ $labels.scenario }}}} on {{{{ $labels.model }}}} at "
                            f"{{{{ $labels.target }}}} from {{{{ $labels.location }}}}: "
                            f"{{{{ $value | humanizePercentage }}}} of "
                            f"{name} samples over 100 ms in the last {long_w}"
                            f" (budget {BUDGET:.0%})."
                        ),
                    },
                }
            )
    lag = quantile_rule("event_loop_lag", 0.99, SATURATION_WINDOW)
    cpu = cpu_rule(SATURATION_WINDOW)
    # Series that measured an error bound in the window: there the bound judges, not the proxies.
    bounded = (
        f"unless on ({BY}) "
        f"(sum by ({BY}) (rate({hist('ttft_error_bound')}_count[{SATURATION_WINDOW}])) > 0)"
    )
    saturated = {
        "alert": "LatbenchClientSaturated",
        # One series per signal (the `signal` label), so two signals at once are two alerts
        # rather than two series with one label set.
        "expr": (
            f'label_replace({lag} > {LOOP_LAG_LIMIT_S:g} {bounded}, "signal", "event_loop_lag",'
            ' "", "")'
            f' or label_replace({cpu} > {CPU_LIMIT:g} {bounded}, "signal", "client_cpu", "", "")'
        ),
        "for": SATURATION_FOR,
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "Client {{ $labels.signal }} over its proxy limit, no error bound measured",
            "description": (
                "{{ $labels.scenario }} at {{ $labels.target }}: {{ $labels.signal }} is "
                "{{ $value | humanize }} over 5m, above its limit (loop lag p99 1ms, CPU 0.9 "
                "core). No error bound was measured in that window, so these proxies judge in "
                "its place: the client may have sent or stamped late. Add clients or lower the "
                "load."
            ),
        },
    }
    over = " or ".join(
        f"label_replace({quantile_rule(f'{key}_error_bound', 0.99, SATURATION_WINDOW)}"
        f' > {tol:g}, "metric", "{key}", "", "")'
        for key, (_, tol) in TOLERANCES.items()
    )
    bound = {
        "alert": "LatbenchMeasurementErrorOverTolerance",
        "expr": over,
        "for": SATURATION_FOR,
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "p99 of the per-request {{ $labels.metric }} error bounds over tolerance",
            "description": (
                "{{ $labels.scenario }} at {{ $labels.target }}: the p99 of the "
                "{{ $labels.metric }} error bounds of its samples is "
                "{{ $value | humanizeDuration }} over 5m (tolerances: TTFT 5ms, ITL 1ms): 1% of "
                "those samples may be off by more. An approximation of the run's verdict, which "
                "bounds the p99 itself (docs/prometheus.md). Add clients or lower the load."
            ),
        },
    }
    return [
        {"name": "latbench-slo", "rules": burn},
        {
            "name": "latbench-client",
            "rules": [*validity_rules(SATURATION_WINDOW), saturated, bound],
        },
    ]


HEADER = (
    "# Generated by deploy/prometheus/generate_rules.py: edit that file, then run it.\n"
    "# tests/deploy/test_rules.py fails when this file and the generator disagree.\n"
)


def render(groups: list[dict[str, Any]]) -> str:
    # No line folding: each expression stays on one line, as it would be pasted into a query.
    body = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1_000_000, allow_unicode=True)
    return HEADER + body


def outputs() -> dict[Path, str]:
    return {RECORDING_FILE: render(recording_groups()), ALERTS_FILE: render(alert_groups())}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(outputs, __doc__.split("\n")[0], Path(__file__).name, argv)


if __name__ == "__main__":
    sys.exit(main())
