"""Grafana dashboards under grafana/: generated JSON up to date, type-checked against Grafana's
published schema, every panel read against the 100 ms target, provisioning consistent.

No Grafana server can be installed here, so the dashboards have not been loaded into a live
Grafana; the live half of the checks (every panel's query against a real Prometheus with data)
is in tests/e2e/test_prometheus_live.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kit import paths

ROOT = paths.ROOT
GRAFANA = ROOT / "grafana"
SCHEMA_CHECK = GRAFANA / "schema-check"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    return {p.name: json.loads(p.read_text()) for p in files}


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def test_committed_json_equals_the_generators_output() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="pip install '.[dashboards]'")
    gen = load(GRAFANA / "dashboards.py", "latbench_grafana_dashboards")
    outputs = gen.outputs()
    assert {p.name for p in outputs} == set(committed())
    for path, text in outputs.items():
        assert path.read_text() == text, f"{path} is stale: run python grafana/dashboards.py"


def test_every_panel_is_read_against_its_target() -> None:
    for name, d in committed().items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in panels(d):
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            colours = [s["color"] for s in steps]
            where = f"{name}: {p['title']}"
            assert p["targets"] and p["description"], where
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            unit = p["fieldConfig"]["defaults"]["unit"]
            validity = any(w in p["title"].lower() for w in ("lag", "queue", "error bound"))
            if unit == "s" and not validity:
                # A latency: green up to 100 ms, red above, the line drawn on time series.
                assert steps[1:] == [{"color": "red", "value": 0.1}], where
            # A share of time, not an attainment: a GPU's utilisation has no objective.
            if unit == "percentunit" and not p["title"].startswith("GPU "):
                assert colours == ["red", "green"] and steps[1]["value"] == 0.99, where
            if p["type"] == "timeseries" and len(steps) > 1:
                style = p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
                assert style == "line+area", where


def test_the_panels_the_issue_asks_for_are_there() -> None:
    d = committed()
    latency = json.dumps(d["latbench-latency.json"])
    for metric in ("ttft", "ttfo", "itl", "tpot", "e2e"):
        for q in ("0.5", "0.9", "0.99"):
            by = "sum by (target, model, location, le)"  # a line per location
            assert f"histogram_quantile({q}, {by} (rate(latbench_{metric}_seconds_bucket" in latency
    for needle in (
        'le=\\"0.1\\"',  # attainment
        "latbench_good_requests_total",
        "latbench_output_tokens_total",
        "latbench_errors_total",
        "latbench_inflight_requests",
        "latbench_event_loop_lag_seconds_bucket",
        "latbench_queue_delay_seconds_bucket",
        "latbench_client_cpu_seconds_total",
        "latbench_ttft_error_bound_seconds_bucket",
        "latbench_itl_error_bound_seconds_bucket",
        "latbench_offered_rate",  # latency against the offered rate (ramps, staircases)
        "$__range",
    ):
        assert needle in latency, needle
    vs = json.dumps(d["latbench-client-vs-server.json"])
    assert 'vllm[:_]time_to_first_token_seconds_bucket\\", model_name=~\\"$model' in vs
    assert 'vllm[:_]inter_token_latency_seconds_bucket\\", model_name=~\\"$model' in vs
    # Issue 17: the per-request split from the server's spans, and the GPU and its energy.
    for needle in (
        "latbench_server_ttft_seconds_sum",
        "latbench_server_queue_seconds_sum",
        "latbench_server_prefill_seconds_sum",
        "latbench_outside_ttft_seconds_bucket",
        "latbench_spans_total",
        "rate(latbench_energy_joules_total",
        "latbench_gpu_utilization_ratio",
        "latbench_gpu_power_watts",
        "latbench_gpu_memory_used_bytes",
    ):
        assert needle in vs, needle
    for dash in d.values():
        names = [v["name"] for v in dash["templating"]["list"]]
        assert names == ["datasource", "target", "model", "scenario", "location"]
        (location,) = [v for v in dash["templating"]["list"] if v["name"] == "location"]
        assert location["multi"] and location["includeAll"]
        assert location["query"].endswith(", location)")


def test_provisioning_matches_the_dashboards() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/latbench-prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/latbench.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["folder"] == "latbench"
    for d in committed().values():
        (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
        assert var["type"] == "datasource" and var["query"] == source["type"]


def schema_check() -> ModuleType:
    return load(SCHEMA_CHECK / "typecheck.py", "latbench_grafana_typecheck")


def run_schema_check(dashboards: dict[str, dict[str, Any]]) -> tuple[int, str]:
    tc = schema_check()
    tc.write_checks(dashboards)
    try:
        result = tc.run_tsc()
    except tc.SchemaCheckUnavailable as e:
        pytest.skip(f"schema check unavailable: {e} (.ci/run sets it up)")
    return result.returncode, result.stdout + result.stderr


def test_dashboards_type_check_against_grafanas_schema() -> None:
    code, out = run_schema_check(committed())
    assert code == 0, out


def test_the_schema_check_catches_a_bad_option() -> None:
    # The check has teeth: a misspelt option, a wrong enum value, a missing required option and
    # an unknown query field each fail it, at their own panel.
    d = copy.deepcopy(committed())
    dash = d["latbench-latency.json"]
    ts = next(p for p in panels(dash) if p["type"] == "timeseries")
    st = next(p for p in panels(dash) if p["type"] == "stat")
    ts["options"]["legend"]["displayMode"] = "lst"
    ts["fieldConfig"]["defaults"]["custom"]["lineWdth"] = 2
    del st["options"]["reduceOptions"]
    st["targets"][0]["legend"] = "x"
    code, out = run_schema_check(d)
    assert code != 0
    assert "'\"lst\"' is not assignable" in out
    assert "'\"lineWdth\"' does not exist" in out
    assert "Property 'reduceOptions' is missing" in out
    assert "'\"legend\"' does not exist" in out
    # Leave the generated files describing the committed dashboards.
    schema_check().write_checks(committed())
