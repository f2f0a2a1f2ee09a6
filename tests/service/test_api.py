"""The service's HTTP API over real HTTP on loopback: `latbench serve` in a child process, the
simulator as its catalogue target. Submit, follow (SSE), records, summary, list, cancel, auth,
catalogue refusals, invalid specs, caps, the queue, bounded metric labels and secrets."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import paths
from kit.service import TOKEN, Service, parse_records, poll, running, service_config
from prometheus_client.parser import text_string_to_metric_families

from latbench.service.api import API
from latbench.service.app import create_app
from latbench.service.config import ServiceConfig
from latbench.summary import summarize

ROOT = paths.ROOT
OPENAPI = ROOT / "latbench" / "service" / "openapi.yaml"

QUICK: dict[str, Any] = {
    "target": "sim",
    "load": {"concurrency": 2, "requests": 8},
    "workload": {"input_tokens": 16, "output_tokens": 16},
}
LONG: dict[str, Any] = {
    "target": "sim",
    "load": {"concurrency": 2, "duration": "100s"},
    "workload": {"input_tokens": 16, "output_tokens": 16},
}
LIMITS = {
    "max_concurrency": 8,
    "max_rate": 50,
    "max_duration": "120s",
    "max_requests": 1000,
    "max_queued_runs": 3,
    "max_body_bytes": 2048,
}


@pytest.fixture(scope="module")
def svc(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("svc")
    with running(sim_url, work, limits=LIMITS, metric_scenarios=["nightly"]) as s:
        yield s


def count_runs(svc: Service) -> int:
    return len(svc.runs(limit="500"))


# -- the round trip ----------------------------------------------------------------------------


def test_submit_follow_records_summary(svc: Service) -> None:
    status, run, headers = svc.request("POST", f"{API}/runs", QUICK)
    assert status == 202
    run = json.loads(run)
    assert headers["Location"] == f"{API}/runs/{run['id']}"
    assert run["state"] in ("queued", "running") and run["target"] == "sim"
    # The effective spec: the catalogue's URL, the caller's load, the service's defaults.
    assert run["spec"]["target"]["base_url"] == svc.run(run["id"])["spec"]["target"]["base_url"]
    assert run["spec"]["load"]["requests"] == 8
    assert run["spec"]["validity"]["loop_lag_p99"] == 0.05

    events = list(svc.events(run["id"]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "end" and "state" in kinds
    assert events[-1]["run"]["state"] == "completed"
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert all(0 <= p["done"] <= 8 for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)

    done = svc.run(run["id"])
    assert done["state"] == "completed" and done["ended"] == "completed"
    summary = done["summary"]
    # The verdict is the summary's (its value depends on this machine's load, not tested here).
    assert done["verdict"] == {
        "slo_passed": summary["slo"]["passed"],
        "client_bound": summary["client_bound"],
        "failures_passed": summary["failures"]["passed"],
        "oversaturated": False,  # a closed loop is never judged
    }
    assert done["validity"] == done["summary"]["validity"]
    counts = done["summary"]["requests"]
    assert (counts["succeeded"], counts["failed"], counts["warmup"]) == (8, 0, 0)
    assert done["started_at"] <= done["ended_at"]

    header, records, footer = parse_records(svc.records(run["id"]))
    assert header is not None and header.run_id == run["id"]
    assert footer is not None and footer.ended == "completed"
    assert len(records) == 8 and all(r.ok for r in records)
    # The stored summary is the summary of the records the API serves.
    replay = summarize(records, window=(footer.window_start, footer.window_end))
    assert replay.requests.to_dict() == done["summary"]["requests"]
    assert replay.tokens.output_total == done["summary"]["tokens"]["output_total"] == 8 * 16
    # The catalogue's simulator serves vLLM's metrics: the run reconciled with them.
    recon = done["summary"]["reconciliation"]
    assert recon["same_requests"] and recon["server_requests"] == 8
    assert recon["tokens"]["generation"] == {"client": 128.0, "server": 128.0}


def test_list_filters_and_pages(svc: Service) -> None:
    ids = [svc.submit({**QUICK, "name": "paged"})["id"] for _ in range(2)]
    for i in ids:
        svc.wait_state(i, "completed")
    page1 = svc.ok("GET", f"{API}/runs?target=sim&state=completed&limit=1")
    assert len(page1["runs"]) == 1 and page1["next_cursor"] is not None
    page2 = svc.ok(
        "GET", f"{API}/runs?target=sim&state=completed&limit=1&cursor={page1['next_cursor']}"
    )
    assert page2["runs"][0]["id"] != page1["runs"][0]["id"]
    newest_first = [r["id"] for r in svc.runs(state="completed")]
    assert newest_first.index(ids[1]) < newest_first.index(ids[0])
    assert all(r["state"] == "completed" for r in svc.runs(state="completed"))
    assert svc.runs(target="no-such-target") == []
    assert "spec" not in page1["runs"][0]  # lists stay light; one run has it
    for bad, name in (("state=done", "state"), ("limit=0", "limit"), ("cursor=x", "cursor")):
        status, body = svc.call("GET", f"{API}/runs?{bad}")
        assert status == 400 and name in body["error"]


# -- refusals: no side effects -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "why"),
    [(None, "needs the service's token"), ("wrong-token-0123456789", "not this service's")],
)
def test_auth_failures_change_nothing(svc: Service, token: str | None, why: str) -> None:
    before = count_runs(svc)
    status, body, headers = svc.request("POST", f"{API}/runs", QUICK, token=token)
    assert status == 401 and why in json.loads(body)["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    some = svc.runs(limit="1")
    if some:
        status, body, _ = svc.request("POST", f"{API}/runs/{some[0]['id']}/cancel", token=token)
        assert status == 401
    status, _, _ = svc.request(
        "POST", f"{API}/runs", QUICK, token=None, headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert status == 401
    assert count_runs(svc) == before


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"target": {"name": "sim", "base_url": "http://127.0.0.1:9"}}, 403, "target.base_url"),
        ({"target": {"name": "sim", "api_key_env": "HOME"}}, 403, "target.api_key_env"),
        ({"target": {"name": "sim", "headers": {"X": "y"}}}, 403, "target.headers"),
        ({"target": "elsewhere"}, 404, "'elsewhere' is not in this service's catalogue"),
        ({"target": None}, 400, "name a catalogue target"),
        ({"output_dir": "/tmp"}, 403, "output_dir"),
        ({"sim": {"ttft": 1}}, 403, "sim"),
        ({"workload": {"source": "jsonl", "path": "/etc/passwd"}}, 403, "workload.path"),
        ({"workload": {"tokenizer": "/etc/passwd"}}, 403, "workload.tokenizer"),
        ({"workload": {"tools": {"path": "/etc/passwd"}}}, 403, "workload.tools.path"),
    ],
)
def test_catalogue_refusals(svc: Service, change: dict[str, Any], status: int, says: str) -> None:
    before = count_runs(svc)
    got, body = svc.call("POST", f"{API}/runs", {**QUICK, **change})
    assert got == status, body
    assert says in body["error"]
    if status == 403 and "target." in says:
        assert "catalogue: sim" in body["error"]
    assert count_runs(svc) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({**QUICK, "load": {"concurrency": 0, "requests": 5}}, "load.concurrency"),
        ({**QUICK, "lod": {}}, "lod: unknown field"),
        ({**QUICK, "load": {"mode": "poisson", "requests": 5}}, "needs a rate"),
        ({**QUICK, "slos": ["ttft:p99<<100"]}, "slos"),
        (
            {**QUICK, "target": {"name": "sim", "timeouts": {"connect": -1}}},
            "target.timeouts.connect",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_specs_are_400_naming_the_field(svc: Service, body: Any, says: str) -> None:
    before = count_runs(svc)
    status, got = svc.call("POST", f"{API}/runs", body)
    assert status == 400 and says in got["error"], got
    status, got = svc.call("POST", f"{API}/runs", raw=b"{not json")
    assert status == 400 and "not JSON" in got["error"]
    assert count_runs(svc) == before


@pytest.mark.parametrize(
    ("load", "says"),
    [
        ({"concurrency": 9, "requests": 5}, "load.concurrency: 9 is over this service's cap of 8"),
        ({"mode": "constant", "rate": 51, "requests": 5}, "limits.max_rate"),
        ({"concurrency": 1, "duration": "121s"}, "limits.max_duration"),
        ({"concurrency": 1, "requests": 1001}, "limits.max_requests"),
    ],
)
def test_caps_are_enforced(svc: Service, load: dict[str, Any], says: str) -> None:
    before = count_runs(svc)
    status, got = svc.call("POST", f"{API}/runs", {**QUICK, "load": load})
    assert status == 400 and says in got["error"], got
    assert count_runs(svc) == before


def test_body_size_limit(svc: Service) -> None:
    before = count_runs(svc)
    big = {**QUICK, "workload": {**QUICK["workload"], "extra_body": {"pad": "x" * 3000}}}
    status, got = svc.call("POST", f"{API}/runs", big)
    assert status == 413, got
    assert count_runs(svc) == before


def test_every_run_gets_stop_conditions_and_an_open_loop_cap(svc: Service) -> None:
    closed = svc.submit({**QUICK, "load": {"concurrency": 1, "requests": 2}})
    assert closed["spec"]["load"]["duration"] == 120.0  # limits.max_duration
    open_ = svc.submit({**QUICK, "load": {"mode": "constant", "rate": 10, "duration": "0.5s"}})
    assert open_["spec"]["load"]["concurrency"] == 8  # limits.max_concurrency, as a cap
    assert open_["spec"]["load"]["requests"] == 1000
    for r in (closed, open_):
        svc.wait_state(r["id"], "completed")


# -- cancel and the queue ----------------------------------------------------------------------


def test_cancel_running_and_queued_runs(svc: Service) -> None:
    long = svc.submit(LONG)
    queued = svc.submit(QUICK)  # same target: waits for the long one
    poll(lambda: (r := svc.run(long["id"]))["progress"] and r["progress"]["done"] >= 2, 30,
         "the long run to finish a few requests")  # fmt: skip
    assert svc.run(queued["id"])["state"] == "queued"

    status, got = svc.call("POST", f"{API}/runs/{queued['id']}/cancel")
    assert status == 202 and got["state"] == "cancelled"
    status, got = svc.call("POST", f"{API}/runs/{long['id']}/cancel")
    assert status == 202 and got["cancel_requested"] is True
    done = svc.wait_state(long["id"], "cancelled", timeout=20)
    assert done["ended"] == "aborted" and done["summary"]["requests"]["succeeded"] >= 1

    _, records, footer = parse_records(svc.records(long["id"]))
    assert footer is not None and footer.ended == "aborted"
    assert sum(r.ok for r in records) >= 2
    assert all(r.ok or r.error == "cancelled" for r in records)

    never = svc.run(queued["id"])
    assert never["started_at"] is None and never["summary"] is None
    status, got = svc.call("GET", f"{API}/runs/{queued['id']}/records")
    assert status == 404 and "no records" in got["error"]
    status, got = svc.call("POST", f"{API}/runs/{long['id']}/cancel")
    assert status == 409 and "already ended (cancelled)" in got["error"]
    status, got = svc.call("POST", f"{API}/runs/nope/cancel")
    assert status == 404


def test_runs_on_one_target_queue_and_a_full_queue_is_429(svc: Service) -> None:
    long = svc.submit(LONG)
    quick = [svc.submit(QUICK) for _ in range(3)]  # limits.max_queued_runs: 3
    status, got = svc.call("POST", f"{API}/runs", QUICK)
    assert status == 429 and "max_queued_runs" in got["error"]
    svc.ok("POST", f"{API}/runs/{long['id']}/cancel")
    runs = [svc.wait_state(r["id"], "completed") for r in quick]
    runs.insert(0, svc.wait_state(long["id"], "cancelled"))
    # One at a time, in order of submission (max_concurrent_runs: 1 by default).
    for before, after in itertools.pairwise(runs):
        assert after["started_at"] >= before["ended_at"]


# -- metrics -----------------------------------------------------------------------------------


def test_metric_labels_stay_bounded(svc: Service) -> None:
    runs = [svc.submit({**QUICK, "name": n}) for n in ("nightly", "mine-1", "mine-2")]
    for r in runs:
        svc.wait_state(r["id"], "completed")
    families = {f.name: f for f in text_string_to_metric_families(svc.metrics())}
    ok = [s for s in families["latbench_requests"].samples
          if s.name == "latbench_requests_total" and s.labels["outcome"] == "ok"]  # fmt: skip
    # Free-form names export as 'adhoc'; the allowed one (metric_scenarios) as itself.
    assert {s.labels["scenario"] for s in ok} == {"nightly", "adhoc"}
    assert {s.labels["target"] for s in ok} == {"sim"}  # the catalogue name, not a URL
    nightly = next(s for s in ok if s.labels["scenario"] == "nightly")
    assert nightly.value == 8
    finished = {
        s.labels["state"]: s.value
        for s in families["latbench_service_runs_finished"].samples
        if s.name.endswith("_total")
    }
    assert finished["completed"] >= 3


# -- the OpenAPI document ----------------------------------------------------------------------


def test_openapi_document_matches_the_routes(tmp_path: Path) -> None:
    from openapi_spec_validator import validate

    doc = yaml.safe_load(OPENAPI.read_text())
    validate(doc)
    app = create_app(ServiceConfig(data_dir=tmp_path), TOKEN)
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert routes == documented
    # Mutating operations, and only they, declare the bearer token.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post"):
                assert ("security" in op) == (method == "post"), (method, path)
    assert (ROOT / "docs" / "openapi.yaml").read_bytes() == OPENAPI.read_bytes()


def test_openapi_is_served(svc: Service) -> None:
    status, body, headers = svc.request("GET", f"{API}/openapi.yaml", token=None)
    assert status == 200 and body == OPENAPI.read_bytes()
    assert headers["Content-Type"].startswith("application/yaml")


def test_errors_are_json(svc: Service) -> None:
    status, body = svc.call("GET", f"{API}/runs/no-such-run")
    assert status == 404 and body == {"error": "no run 'no-such-run'"}
    status, body = svc.call("GET", "/api/v1/nothing-here")
    assert status == 404 and "error" in body
    status, body = svc.call("DELETE", f"{API}/runs")
    assert status == 405 and "error" in body


# -- secrets -----------------------------------------------------------------------------------


def test_target_keys_never_leave_the_service(sim_url: str, tmp_path: Path) -> None:
    key = "sk-live-" + "7" * 24
    header_secret = "hdr-secret-" + "5" * 20
    config = service_config(
        sim_url,
        tmp_path,
        targets={
            "sim": {
                "base_url": sim_url,
                "api_key_env": "SIM_KEY",
                "headers": {"X-Api-Key": header_secret},
            },
        },
    )
    svc = Service(config, tmp_path, env={"SIM_KEY": key}).start()
    try:
        seen: list[bytes] = []
        _status, body, _ = svc.request("POST", f"{API}/runs", QUICK)
        seen.append(body)
        run_id = json.loads(body)["id"]
        seen.append(json.dumps(list(svc.events(run_id))).encode())
        for path in (f"{API}/runs/{run_id}", f"{API}/runs", f"{API}/targets", "/metrics",
                     f"{API}/runs/{run_id}/records"):  # fmt: skip
            seen.append(svc.request("GET", path)[1])
        assert svc.run(run_id)["state"] == "completed"
        assert svc.run(run_id)["spec"]["target"]["headers"] == {"X-Api-Key": "***"}
    finally:
        assert svc.stop() == 0
    files = [p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()]
    for blob in [*seen, *files, svc.log().encode()]:
        assert key.encode() not in blob
        assert header_secret.encode() not in blob
    assert len(files) >= 3  # the db, records.jsonl, results.json were all looked at
