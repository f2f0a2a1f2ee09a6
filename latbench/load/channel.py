"""How the runner talks to one worker, wherever it runs: a `Channel` carries frame payloads.

The runner (`load.runner`) sends a worker its shard and control frames and receives its `s`,
`h`, record and `end` frames (the protocol is `load.worker`'s docstring); it does not care
whether the worker is a child process on this host (`PipeChannel`, a pipe each way, as every
local run does) or one of an agent's worker slots on another machine (`agents.pool`, a
WebSocket). A channel says who is at the other end (`agent`, `location`; None locally) and how
that end's clock relates to this one (`offset_ns`: the other end's CLOCK_MONOTONIC minus ours;
`uncertainty_ns`: the bound on that estimate; `rtt_ns`: the round trip it was measured over), so
the runner can move every instant it sends and receives onto one timeline; a pipe's are all 0.

The first payload sent on a channel is the pickled shard (`send_shard`: a remote channel signs
it, since its receiver must not unpickle anything an unauthenticated peer sent); every later one
an orjson array (`load.wire.payload`). `recv` returns None when the worker's stream ended
cleanly (it sent `end`, or it died: the runner tells the two apart by whether `end` came) and
`describe_death` then says how it ended, for the run's `incomplete` line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Protocol

from latbench.load.wire import Origin, frame, read_frame

# The directory that holds the `latbench` package, so workers import this same copy.
IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


class Channel(Protocol):
    """One worker's two streams of frame payloads, and who and where it is."""

    agent: int | None  # the agent's index; None for a worker on this host
    location: str | None
    offset_ns: int  # the worker's clock minus this process's (CLOCK_MONOTONIC), ns
    uncertainty_ns: int  # how far the true offset may lie from offset_ns, ns
    rtt_ns: int  # the round trip the offset was measured over (0 on this host)

    @property
    def origin(self) -> Origin | None:
        """What the runner stamps this channel's records with (None: a local worker)."""
        ...

    @property
    def who(self) -> str:
        """Who is at the other end, as a report names what was lost: "worker 1", or its agent,
        "agent 2 (host h, location eu)"."""
        ...

    def send_shard(self, pickled: bytes) -> None:
        """The first payload: the pickled `load.worker.Shard`."""
        ...

    def send(self, payload: bytes) -> None:
        """A control payload (`load.wire.payload`); dropped once the channel is closed."""
        ...

    async def recv(self) -> bytes | None:
        """The next payload from the worker; None at the end of its stream. Raises
        ConnectionError when the stream was torn inside a frame."""
        ...

    def close(self) -> None:
        """End the stream to the worker: to one still running, an abort."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the worker is gone (a process reaped; one that hangs is killed)."""
        ...

    async def describe_death(self) -> str:
        """How the worker ended, after `recv` returned None without its `end` frame: e.g.
        "worker 0 (pid 41) died (exit status -9, SIGKILL)"."""
        ...


async def start_worker_process() -> asyncio.subprocess.Process:
    """A `python -m latbench.load.worker` child of this process, importing this same latbench,
    with a pipe each way. The runner starts its local workers so, and an agent its slots'."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (IMPORT_ROOT, env.get("PYTHONPATH")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "latbench.load.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )


def describe_status(status: int) -> str:
    """An exit status as a person reads it: "exit status -9, SIGKILL"."""
    if status < 0:
        try:
            return f"exit status {status}, {signal.Signals(-status).name}"
        except ValueError:
            pass
    return f"exit status {status}"


async def reap(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int:
    """Wait for a worker to exit; one that hangs after its stream ended is killed."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


class PipeChannel:
    """A worker process on this host: frames on its stdin and stdout, one clock."""

    agent: int | None = None
    location: str | None = None
    offset_ns = 0
    uncertainty_ns = 0
    rtt_ns = 0
    origin: Origin | None = None

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc

    @property
    def who(self) -> str:
        return f"worker {self.index}"

    @classmethod
    async def spawn(cls, index: int) -> PipeChannel:
        return cls(index, await start_worker_process())

    def send(self, payload: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(frame(payload))

    send_shard = send  # its own child: nobody else can write to the pipe

    async def recv(self) -> bytes | None:
        assert self.proc.stdout is not None
        return await read_frame(self.proc.stdout)

    def close(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def wait_closed(self) -> None:
        await reap(self.proc)

    async def describe_death(self) -> str:
        status = await reap(self.proc)
        return f"worker {self.index} (pid {self.proc.pid}) died ({describe_status(status)})"
