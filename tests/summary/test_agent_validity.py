"""A run on agents judged per agent (summary.validity.judge_agents): each agent's verdict is a
single-host summary of its own records with its own workers' figures; the run is client-bound
when any agent is, even one whose error the union's percentiles hide; a flagged clock and the
load never offered are notes, not verdicts; all of it survives the footer's JSON; a local run's
footer and verdict are as they were."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console

from latbench.records import Record
from latbench.render.terminal import render_summary
from latbench.render.text import agent_rows
from latbench.shared.errors import RecordsError
from latbench.spec import ValidityLimits
from latbench.summary import ClientStats, summarize
from latbench.summary.validity import AgentStats, Shortfall

MS = 1_000_000


def rec(seq: int, agent: int | None, ttft_ms: float, first_late_ns: int = 0) -> Record:
    """A request sent at 0 by `agent`, with three events 10 ms apart."""
    first = int(ttft_ms * MS)
    ev = (first, first + 10 * MS, first + 20 * MS)
    return Record(
        run_id="t",
        seq=seq,
        phase="measure",
        api="chat",
        t_intended=0,
        t_sent=0,
        t_end=ev[-1] + 1,
        ev_t=ev,
        ev_kind="ccc",
        sent_late=0,
        ev_late=(first_late_ns, 0, 0),
        agent=agent,
        location=None if agent is None else f"loc{agent}",
        clock_offset_ns=None if agent is None else 0,
        clock_uncertainty_ns=None if agent is None else 40_000,
    )


def stats(index: int, **kw: object) -> AgentStats:
    d: dict[str, object] = {
        "index": index,
        "location": f"loc{index}",
        "host": f"h{index}",
        "workers": 1,
        "loop_lag_ns": [100_000 * (index + 1)] * 50,
        "cpu_s": 1.0 + index,
        "wall_s": 10.0,
        "uncertainty_ns": 40_000,
    }
    d.update(kw)
    return AgentStats(**d)  # type: ignore[arg-type]


def client(*agents: AgentStats, shortfall: Shortfall | None = None) -> ClientStats:
    return ClientStats(
        loop_lag_ns=[x for a in agents for x in a.loop_lag_ns],
        cpu_s=max(a.cpu_s for a in agents),
        wall_s=10.0,
        open_loop=True,
        unsent=0,
        agents=agents,
        shortfall=shortfall,
    )


def unstamped(records: list[Record]) -> list[Record]:
    """The records as a single-host run would have them: no agent fields."""
    return [
        replace(r, agent=None, location=None, clock_offset_ns=None, clock_uncertainty_ns=None)
        for r in records
    ]


# Agent 0: 95 exact requests, TTFT 50-145 ms. Agent 1: 5 requests, the fastest of the run
# (TTFT 20 ms), each first event possibly 7 ms late. Over the union the p99 is agent 0's, exact;
# agent 1's own p99 may be 7 ms off, over the 5 ms tolerance. (A late first event widens the
# first gap's ITL bound as much: ITL's tolerance is set apart, to judge TTFT alone.)
A0 = [rec(i, 0, 50 + i) for i in range(95)]
A1 = [rec(100 + i, 1, 20, first_late_ns=7 * MS) for i in range(5)]
LIMITS = ValidityLimits(itl_tolerance_s=0.01)


def test_an_agent_client_bound_alone_makes_the_run_client_bound_though_the_union_hides_it() -> None:
    union = summarize(A0 + A1, client=client(stats(0), stats(1)), limits=LIMITS)
    one_host = ClientStats(
        loop_lag_ns=[100_000] * 100, cpu_s=2.0, wall_s=10.0, open_loop=True, unsent=0
    )
    local = summarize(unstamped(A0 + A1), client=one_host, limits=LIMITS)
    assert not local.client_bound  # the same records as one host's: within tolerance
    v = union.validity
    assert union.client_bound and v.client_bound
    assert v.headline == (
        "client-bound on one agent's own records: agent 1 (host h1, location loc1), the TTFT "
        "error bound, 7.00 ms at p99, exceeds its 5.00 ms tolerance"
    )
    assert [r.split(":")[0] for r in v.reasons] == ["agent 1 (host h1, location loc1)"]
    assert v.reasons[0].startswith(
        "agent 1 (host h1, location loc1): TTFT may be overstated by up to 7.00 ms at p99"
    )
    # Each agent's verdict is a single-host summary of its own records, with its own figures.
    for st, mine in ((stats(0), A0), (stats(1), A1)):
        (own,) = [av for av in v.agents if av.agent.index == st.index]
        alone = summarize(unstamped(mine), client=st.client(True), limits=LIMITS).validity
        assert own.validity == alone and own.measured == len(mine)
    assert [av.validity.client_bound for av in v.agents] == [False, True]
    d = union.to_dict()["validity"]
    assert d["client_bound"] is True and [a["client_bound"] for a in d["agents"]] == [False, True]
    assert d["agents"][1]["validity"]["error_bound"]["ttft"]["p99"]["bound_s"] == 0.007
    assert d["not_offered"] is None and d["notes"] == []


def test_a_flagged_clock_and_a_shortfall_are_notes_and_round_trip_through_the_footer() -> None:
    short = Shortfall(0.25, 50, 200, "requests", ("agent 1 (host h1, location loc1)",))
    why = "agent 1 (host h1, location loc1) lost: connection closed"
    lost = stats(1, flagged=True, uncertainty_ns=7_500_000, drift_ns=-120_000, lost=why, lost_ns=5)
    c = client(stats(0), lost, shortfall=short)
    again = ClientStats.from_dict(c.to_dict())
    assert again == replace(c, loop_lag_ns=tuple(c.loop_lag_ns), agents=tuple(
        replace(a, loop_lag_ns=tuple(a.loop_lag_ns)) for a in c.agents
    ))  # fmt: skip
    good = [rec(i, i % 2, 50 + i) for i in range(40)]
    s = summarize(good, client=again)
    v = s.validity
    assert not s.client_bound and v.shortfall == short
    assert v.notes == (
        "agent 1 (host h1, location loc1): its clock offset was uncertain by 7.50 ms and "
        "moved -0.12 ms during the run, over the run's --max-clock-uncertainty: its requests' "
        "place in the schedule and the window may be off by that much (its latencies are not)",
        "25% of the planned load was not offered (50 of 200 planned requests): agent 1 "
        "(host h1, location loc1) was lost",
    )
    rows = agent_rows(v)
    assert [r[0] for r in rows] == ["0", "1"]
    assert rows[1][-1] == "ok, lost mid-run, clock flagged" and rows[1][-2] == "7.50"
    console = Console(record=True, width=200)
    render_summary(s, console)
    text = console.export_text()
    assert "validity per agent (ms; error bounds and lags at p99)" in text
    assert "note: 25% of the planned load was not offered" in text


def test_a_file_without_a_footer_judges_each_agent_by_its_records_bound_alone() -> None:
    s = summarize(A0 + A1, limits=LIMITS)  # no client stats: a coordinator killed mid-run
    v = s.validity
    assert s.client_bound and [av.agent.index for av in v.agents] == [0, 1]
    assert [av.agent.location for av in v.agents] == ["loc0", "loc1"]
    assert v.agents[1].validity.loop_lag_p99_s is None  # no worker figures without a footer


def test_a_local_run_is_judged_and_stored_as_before() -> None:
    c = ClientStats(loop_lag_ns=[1] * 10, cpu_s=1.0, wall_s=10.0, open_loop=True, unsent=0)
    assert set(c.to_dict()) == {"loop_lag_ns", "cpu_s", "wall_s", "open_loop", "unsent"}
    v = summarize(unstamped(A0), client=c).validity
    assert v.agents == () and v.notes == () and v.shortfall is None


@pytest.mark.parametrize(
    "bad",
    [
        {"agents": [{"index": "x"}]},
        {"agents": [{"index": 0, "host": 3}]},
        {"shortfall": {"share": "a lot"}},
        {"agents": {"index": 0}},
    ],
)
def test_a_garbled_footer_agent_entry_is_a_records_error(bad: dict[str, object]) -> None:
    d = {"loop_lag_ns": [], "cpu_s": 0, "wall_s": 0, "open_loop": True, "unsent": 0, **bad}
    with pytest.raises(RecordsError, match="client stats"):
        ClientStats.from_dict(d)
