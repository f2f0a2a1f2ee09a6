"""Run history: one SQLite table of run metadata under the data directory.

Records are not here: each run's raw records stay in `<data_dir>/runs/<run_id>/records.jsonl`,
appended as requests finish (`latbench.sinks.jsonl`), so a killed service loses no measurement.
SQLite holds what the API lists and filters on: state, target, times, the spec and the summary.

aiosqlite runs every statement on one thread of its own, so a slow disk (a commit's fsync) never
stalls the event loop that is timing a benchmark's tokens. WAL mode: readers never block the
writer, and a kill -9 loses no committed transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from latbench.shared.errors import LatbenchError

QUEUED, RUNNING = "queued", "running"
COMPLETED, FAILED, CANCELLED, INTERRUPTED = "completed", "failed", "cancelled", "interrupted"
STATES: tuple[str, ...] = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED})

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    schedule TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    ended TEXT,
    error TEXT,
    request TEXT NOT NULL,
    spec TEXT NOT NULL,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, seq);
CREATE INDEX IF NOT EXISTS runs_target ON runs (target, seq);
CREATE INDEX IF NOT EXISTS runs_schedule ON runs (schedule, seq);
"""
_COLUMNS = (
    "seq, id, target, name, schedule, state, created_at, started_at, ended_at, ended, error, "
    "request, spec, summary"
)


@dataclass
class RunRow:
    id: str
    target: str
    name: str  # the spec's name (scenario)
    schedule: str | None  # the schedule that fired it; None: submitted through the API
    state: str
    created_at: float
    request: dict[str, Any]  # the caller's document, target by name
    spec: dict[str, Any]  # the spec run, as results.json shows it (no secrets)
    started_at: float | None = None
    ended_at: float | None = None
    # How the runner ended: completed, stopped, aborted, oversaturated (stopped on its verdict,
    # the evidence in summary.oversaturation), incomplete.
    ended: str | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    seq: int | None = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _dumps(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _row(r: Sequence[Any]) -> RunRow:
    return RunRow(
        seq=r[0],
        id=r[1],
        target=r[2],
        name=r[3],
        schedule=r[4],
        state=r[5],
        created_at=r[6],
        started_at=r[7],
        ended_at=r[8],
        ended=r[9],
        error=r[10],
        request=orjson.loads(r[11]),
        spec=orjson.loads(r[12]),
        summary=None if r[13] is None else orjson.loads(r[13]),
    )


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Store:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path)
        except (OSError, sqlite3.Error) as e:
            raise LatbenchError(f"cannot open the run history {path}: {e}") from None
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across kill -9
            version = (await (await db.execute("PRAGMA user_version")).fetchone() or (0,))[0]
            if version not in (0, SCHEMA_VERSION):
                raise LatbenchError(
                    f"{path} has schema version {version}; this latbench reads {SCHEMA_VERSION}"
                )
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.commit()
        except sqlite3.Error as e:
            await db.close()
            raise LatbenchError(f"{path} is not a usable latbench history: {e}") from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> bool:
        cur = await self._db.execute("SELECT 1")
        return (await cur.fetchone()) == (1,)

    async def insert(self, r: RunRow) -> None:
        cur = await self._db.execute(
            "INSERT INTO runs (id, target, name, schedule, state, created_at, started_at, "
            "ended_at, ended, error, request, spec, summary) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.id, r.target, r.name, r.schedule, r.state, r.created_at, r.started_at,
                r.ended_at, r.ended, r.error, _dumps(r.request), _dumps(r.spec),
                _dumps(r.summary),
            ),
        )  # fmt: skip
        r.seq = cur.lastrowid
        await self._db.commit()

    async def update(self, r: RunRow) -> None:
        """Write the fields that change over a run's life."""
        await self._db.execute(
            "UPDATE runs SET state=?, started_at=?, ended_at=?, ended=?, error=?, spec=?, "
            "summary=? WHERE id=?",
            (
                r.state, r.started_at, r.ended_at, r.ended, r.error, _dumps(r.spec),
                _dumps(r.summary), r.id,
            ),
        )  # fmt: skip
        await self._db.commit()

    async def get(self, run_id: str) -> RunRow | None:
        cur = await self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id=?", (run_id,))
        r = await cur.fetchone()
        return None if r is None else _row(r)

    async def list(
        self,
        *,
        state: str | None = None,
        target: str | None = None,
        schedule: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> tuple[list[RunRow], int | None]:
        """Newest first. Returns a page and the cursor of the next one (None: last page)."""
        where, args = [], []
        for col, value in (("state", state), ("target", target), ("schedule", schedule)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        if before is not None:
            where.append("seq<?")
            args.append(before)
        sql = f"SELECT {_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = await self._db.execute(f"{sql} ORDER BY seq DESC LIMIT ?", (*args, limit + 1))
        rows = [_row(r) for r in await cur.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].seq if more and rows else None)

    async def in_state(self, *states: str) -> list[RunRow]:
        """Oldest first."""
        marks = ", ".join("?" for _ in states)
        cur = await self._db.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY seq", states
        )
        return [_row(r) for r in await cur.fetchall()]

    async def prune(
        self, max_age_s: float | None, max_runs: int | None, now: float | None = None
    ) -> list[str]:
        """Delete finished runs older than `max_age_s` or beyond the newest `max_runs` finished
        ones. Returns their ids (the caller deletes their records)."""
        now = time.time() if now is None else now
        done = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
        ids: set[str] = set()
        if max_age_s is not None:
            cur = await self._db.execute(
                f"SELECT id FROM runs WHERE state IN ({done}) AND created_at < ?",
                (now - max_age_s,),
            )
            ids.update(r[0] for r in await cur.fetchall())
        if max_runs is not None:
            cur = await self._db.execute(
                f"SELECT id FROM runs WHERE state IN ({done}) ORDER BY seq DESC LIMIT -1 OFFSET ?",
                (max_runs,),
            )
            ids.update(r[0] for r in await cur.fetchall())
        if ids:
            await self._db.executemany("DELETE FROM runs WHERE id=?", [(i,) for i in ids])
            await self._db.commit()
        return sorted(ids)
