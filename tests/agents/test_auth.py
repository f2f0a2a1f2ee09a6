"""What a peer without the token can do to an agent, and with a recorded handshake or shard: a
server posing as the coordinator (the review's fake, which once learnt the token from the bearer
header and had the agent unpickle its own code) gets nothing it can sign with; a handshake
replayed is refused; a shard signed for another connection or slot is refused unpickled. Real
agents, a real aiohttp server and the real pool, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pickle
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kit.agents import TOKEN, Agents

from latbench.agents.pool import AgentPool
from latbench.agents.protocol import (
    NONCE_HEADER,
    REFUSED_HEADER,
    auth_headers,
    control,
    coordinator_proof,
    hello,
    make_nonce,
    parse_control,
    sign,
)

WAIT_S = 60.0  # agents are Python processes starting on a busy 2-core machine


class Evil:
    """Unpickling it creates `path`: the proof that a peer had the agent run its code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture
async def pool() -> AsyncIterator[AgentPool]:
    async with AgentPool(TOKEN, "127.0.0.1", 0) as p:
        yield p


async def ended(proc: subprocess.Popen[str], timeout: float = WAIT_S) -> tuple[int, str]:
    _, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, " ".join(err.split())


async def test_a_fake_coordinator_learns_nothing_it_can_have_the_agent_run(
    agent_procs: Agents, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    seen: dict[str, str] = {}

    async def handle(request: web.Request) -> web.WebSocketResponse:
        # Whatever the agent sends is taken for the key, every way it might have served.
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        nonce = request.headers.get(NONCE_HEADER, "")
        seen.update(bearer=bearer, nonce=nonce)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        parse_control((await ws.receive(timeout=30)).data)
        await ws.send_str(control("welcome", {"index": 0, "stay": False, "proof": bearer}))
        evil = pickle.dumps(Evil(marker))
        for key in (bearer, nonce):
            await ws.send_bytes(bytes([0]) + sign(key, nonce, 0, evil))
            old_style = hmac.new(key.encode(), evil, hashlib.sha256).digest() + evil
            await ws.send_bytes(bytes([0]) + old_style)
        async for _ in ws:  # until the agent hangs up
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/agents", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        proc = agent_procs.start(f"ws://127.0.0.1:{port}/v1/agents")
        code, err = await ended(proc)
    finally:
        await runner.cleanup()
    assert code == 1 and "did not prove it holds the token: it is not the coordinator" in err, err
    assert "nothing it sent was run" in err and "Traceback" not in err
    assert not marker.exists()
    # It saw a proof and a nonce, never the token.
    assert seen["bearer"] and seen["nonce"] and TOKEN not in str(seen)


async def test_a_replayed_or_stale_handshake_is_refused_before_the_upgrade(pool: AgentPool) -> None:
    headers = auth_headers(TOKEN, make_nonce())
    nonce = headers[NONCE_HEADER]
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(pool.url, headers=headers) as ws:
            await ws.send_str(control("hello", hello(None, None, 1).to_dict()))
            welcome = parse_control((await ws.receive(timeout=10)).data)
        assert welcome[0] == "welcome" and welcome[1]["proof"] == coordinator_proof(TOKEN, nonce)
        # The same headers again, as one who recorded them off the wire would send them.
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(pool.url, headers=headers)
        assert e.value.status == 401 and e.value.headers is not None
        assert "replay" in e.value.headers[REFUSED_HEADER]
        stale = make_nonce(time.time_ns() // 1_000_000 - 10 * 60_000)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(pool.url, headers=auth_headers(TOKEN, stale))
        assert e.value.status == 401 and e.value.headers is not None
        assert "wall clock is -600 s from the coordinator's" in e.value.headers[REFUSED_HEADER]
    assert "replay" in pool.refusals[-2] and "wall clock" in pool.refusals[-1]


async def test_a_shard_signed_for_another_connection_or_slot_is_refused_unpickled(
    pool: AgentPool, agent_procs: Agents, tmp_path: Path
) -> None:
    proc = agent_procs.start(pool.url, workers=2)
    (conn,) = await pool.wait_for(1, time.monotonic() + WAIT_S)
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Evil(marker))
    other_nonce = make_nonce()
    # Signed with the token, but for slot 1 / for another connection, sent to slot 0.
    for nonce, slot in ((conn.nonce, 1), (other_nonce, 0)):
        channel = pool.channels([conn])[0]
        conn.send(bytes([0]) + sign(TOKEN, nonce, slot, evil))
        assert await asyncio.wait_for(channel.recv(), 20) is None
        death = await channel.describe_death()
        assert "worker 0 refused: the shard's signature is not the token's for this connection" in (
            death
        )
    assert not marker.exists()
    assert proc.poll() is None  # it refused the shards, not the coordinator
    await pool.finish([conn])
    code, err = await ended(proc)
    assert code == 0 and "the coordinator is done" in err, err
