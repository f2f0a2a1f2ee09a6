"""A session's requests on the connection its previous request used, when it is idle.

aiohttp's pool (aiohttp 3.14 `BaseConnector`) keeps the idle keep-alive connections of each
host in one queue and hands out the one idle longest (`_get` takes from the left of a deque,
`_release` appends; before 3.11 a list, taken from its end). Its key is the host, port and TLS
settings only, and it has no public way to ask for a given connection. So, left alone, a
session's next turn takes whichever connection has been idle longest, its own only by chance:
3 users with 5-30 ms think times moved 17 or 18 of 27 later turns to another connection
(tests/load/test_sessions.py). A chat client keeps its connection, and a load balancer that
routes by connection sees one client per session only if we do too.

`SessionConnector` adds a preference, not a pool: as a request asks for a connection, it moves
the session's own (if idle) to the head of aiohttp's queue; a request of no session, or a
session's first, is moved onto a connection no live session holds, if one is idle. aiohttp
still checks, takes and releases every connection as before; when the preferred one is busy
or closed, the request takes what aiohttp gives (a session changes connection only then: after
a server's close, or when every idle connection is another live session's). The session a
request belongs to is a context variable the worker's session loop sets (load/worker.py). This
reads aiohttp's private `_conns`, as client/reads.py reads `_factory`; the test fails if that
changes.
"""

from __future__ import annotations

import weakref
from collections import deque
from contextvars import ContextVar
from typing import Any

from aiohttp.client_proto import ResponseHandler

from latbench.client.reads import StampingConnector


class Affinity:
    """The connection one session last used (None before its first request)."""

    __slots__ = ("proto",)

    def __init__(self) -> None:
        self.proto: ResponseHandler | None = None


SESSION: ContextVar[Affinity | None] = ContextVar("latbench_session_affinity", default=None)


class SessionConnector(StampingConnector):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Connections some live session last used, so that others leave them to it.
        self._held: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    def release_session(self, affinity: Affinity) -> None:
        """The session is over: its connection is anyone's."""
        if affinity.proto is not None:
            self._held.discard(affinity.proto)
            affinity.proto = None

    async def connect(self, req: Any, *args: Any, **kwargs: Any) -> Any:
        # aiohttp's connect takes from the idle queue first thing: set the queue's order here.
        mine = SESSION.get()
        conns = self._conns.get(req.connection_key)
        if conns:
            want = None if mine is None else mine.proto
            for i, (proto, _) in enumerate(conns):
                if proto is want if want is not None else proto not in self._held:
                    _to_next(conns, i)
                    break
        conn = await super().connect(req, *args, **kwargs)
        if mine is not None and conn.protocol is not mine.proto:
            if mine.proto is not None:
                self._held.discard(mine.proto)
            mine.proto = conn.protocol
            if mine.proto is not None:
                self._held.add(mine.proto)
        return conn


def _to_next(conns: Any, i: int) -> None:
    """Move entry i of aiohttp's idle queue to where its `_get` takes the next one from: the
    left of a deque (aiohttp >= 3.11), the end of a list (older ones pop from the end)."""
    entry = conns[i]
    del conns[i]
    if isinstance(conns, deque):
        conns.appendleft(entry)
    else:
        conns.append(entry)
