"""The service's pure parts on their own: when schedules fire, what admission makes of a
submission, and the store's pages and retention (a real SQLite file)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from latbench.service.admit import Refused, admit, scenario_label
from latbench.service.config import ScheduleConfig, ServiceConfig
from latbench.service.scheduler import first_fire, next_fire
from latbench.service.store import COMPLETED, QUEUED, RunRow, Store


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("schedule", "after", "u", "expected"),
    [
        ({"every": "5m"}, "2025-01-01T12:00:00", 0.0, "2025-01-01T12:05:00"),
        ({"every": "5m", "jitter": "30s"}, "2025-01-01T12:00:00", 0.5, "2025-01-01T12:05:15"),
        ({"cron": "*/5 * * * *"}, "2025-01-01T12:01:30", 0.0, "2025-01-01T12:05:00"),
        ({"cron": "*/5 * * * *"}, "2025-01-01T12:05:00", 0.0, "2025-01-01T12:10:00"),
        (
            {"cron": "0 3 * * *", "jitter": "10m"},
            "2025-01-01T12:00:00",
            0.1,
            "2025-01-02T03:01:00",
        ),
    ],
)
def test_next_fire(schedule: dict[str, Any], after: str, u: float, expected: str) -> None:
    s = ScheduleConfig.model_validate({"name": "p", "target": "t", **schedule})
    assert next_fire(s, ts(after), u) == ts(expected)


def test_first_fire_interval_soon_cron_at_its_slot() -> None:
    every = ScheduleConfig.model_validate({"name": "p", "target": "t", "every": "1h",
                                           "jitter": "20s"})  # fmt: skip
    assert first_fire(every, ts("2025-01-01T12:00:00"), 0.5) == ts("2025-01-01T12:00:10")
    cron = ScheduleConfig.model_validate({"name": "p", "target": "t", "cron": "0 * * * *"})
    assert first_fire(cron, ts("2025-01-01T12:00:01"), 0.0) == ts("2025-01-01T13:00:00")


def config(**over: Any) -> ServiceConfig:
    base: dict[str, Any] = {
        "targets": {"gpu": {"base_url": "http://127.0.0.1:8000/v1", "api_key_env": "K"}},
        "limits": {"max_concurrency": 16, "max_duration": "5m", "max_requests": 500},
        "defaults": {"slos": ["ttft:p99<=200ms"], "load": {"warmup": "1s"}},
        "metric_scenarios": ["nightly"],
    }
    return ServiceConfig.model_validate({**base, **over})


URLS = {"gpu": "http://127.0.0.1:8000"}


def test_admission_fills_the_target_from_the_catalogue() -> None:
    a = admit({"target": {"name": "gpu", "timeouts": {"first_token": "5s"}},
               "load": {"concurrency": 4, "duration": "30s"}}, config(), URLS)  # fmt: skip
    t = a.spec.target
    assert (t.base_url, t.api_key_env) == ("http://127.0.0.1:8000", "K")
    assert t.timeouts.first_token == 5.0 and t.timeouts.connect == 10.0
    assert [str(s) for s in a.spec.slos] == ["ttft:p99<=200ms"]  # the service's default
    assert a.spec.load.warmup == 1.0 and a.spec.load.requests == 500  # default, cap
    assert str(a.spec.output_dir).endswith("runs")
    assert a.request["target"] == {"name": "gpu", "timeouts": {"first_token": "5s"}}
    # The caller's document is kept as sent, not as filled in.
    assert "requests" not in a.request["load"]


def test_admission_keeps_callers_choices_over_defaults() -> None:
    a = admit({"target": "gpu", "slos": ["itl:p50<=50ms"], "load": {"requests": 9}}, config(),
              URLS)  # fmt: skip
    assert [str(s) for s in a.spec.slos] == ["itl:p50<=50ms"]
    assert a.spec.load.duration == 300.0  # the cap stops it if the requests do not


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": {"name": "gpu", "verify_tls": False}}, 403),
        ({"target": {"name": "gpu", "retry": {"max_retries": 3}}}, 403),
        ({"target": {"name": "gpu", "colour": "red"}}, 400),
        ({"target": "cpu"}, 404),
        ({"target": "gpu", "load": {"concurrency": 17, "requests": 1}}, 400),
        ("not a mapping", 400),
    ],
)
def test_admission_refusals(body: Any, status: int) -> None:
    with pytest.raises(Refused) as e:
        admit(body, config(), URLS)
    assert e.value.status == status


def test_scenario_labels_are_bounded() -> None:
    c = config()
    named = admit({"target": "gpu", "name": "nightly", "load": {"requests": 2}}, c, URLS)
    free = admit({"target": "gpu", "name": "run-4711", "load": {"requests": 2}}, c, URLS)
    assert scenario_label(named.spec, c, None) == "nightly"
    assert scenario_label(free.spec, c, None) == "adhoc"
    assert scenario_label(free.spec, c, "probe") == "probe"


def row(i: int, state: str = COMPLETED, created: float = 1000.0) -> RunRow:
    return RunRow(id=f"r{i}", target="gpu", name="n", schedule=None, state=state,
                  created_at=created + i, request={"target": "gpu"}, spec={})  # fmt: skip


async def test_store_pages_newest_first_and_prunes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db" / "latbench.db")
    try:
        for i in range(5):
            await store.insert(row(i))
        await store.insert(row(5, state=QUEUED))
        page, cursor = await store.list(limit=4)
        assert [r.id for r in page] == ["r5", "r4", "r3", "r2"] and cursor is not None
        rest, end = await store.list(limit=4, before=cursor)
        assert [r.id for r in rest] == ["r1", "r0"] and end is None
        assert [r.id for r in (await store.list(state=QUEUED))[0]] == ["r5"]
        # Keep the newest 3 finished; by age, drop what is older than 1002.5 s - never r5.
        assert await store.prune(max_age_s=None, max_runs=3) == ["r0", "r1"]
        assert await store.prune(max_age_s=10.0, max_runs=None, now=1012.5) == ["r2"]
        assert [r.id for r in (await store.list())[0]] == ["r5", "r4", "r3"]
    finally:
        await store.close()
    reopened = await Store.open(tmp_path / "db" / "latbench.db")
    try:
        got = await reopened.get("r4")
        assert got is not None and got.state == COMPLETED and got.request == {"target": "gpu"}
    finally:
        await reopened.close()
