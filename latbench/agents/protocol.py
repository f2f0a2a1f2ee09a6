"""What an agent and its coordinator say to each other over their WebSocket, and the arithmetic
both sides share: the signed shard, the clock samples, the hello's checks.

One WebSocket per agent, `GET /v1/agents`. The token itself never travels: whoever read it
off the wire (or a server the agent was pointed at by mistake) could sign shards with it. The
agent makes a nonce per connection, `<unix ms>-<32 hex random>`, sends it as `X-Latbench-Nonce`
and proves it holds the token with `Authorization: Bearer <hex HMAC-SHA256(token,
"latbench-agent-auth\0" + nonce)>`. The coordinator checks that proof in constant time before
the upgrade and answers 401 otherwise, also for a nonce whose time is more than `NONCE_WINDOW_S`
from its own wall clock or that it has seen before (`Nonces`: a recorded header replayed is
refused), and keeps the nonce as the connection's. Its welcome proves the coordinator holds the
token too (`proof`: HMAC(token, "latbench-coordinator\0" + nonce)); an agent that finds it
missing or wrong hangs up before it takes anything from that peer.

Text messages are JSON arrays of control, named by their first element:

    agent -> coordinator   ["hello", {protocol, version, index, location, host, pid, workers}]
                           ["pong", t1, t_agent]        an answer to a ping, t_agent its clock
                           ["exit", slot, status]       a slot's worker process ended so
                           ["error", slot, why]         a slot refused what it was sent
    coordinator -> agent   ["welcome", {index, stay, proof}] | ["refused", why]   the answer
                           to the hello; stay: a service's pool, which keeps its agents between
                           runs; proof: the coordinator's (above)
                           ["ping", t1]                 t1 on the coordinator's clock
                           ["clock", offset_ns, uncertainty_ns, rtt_ns]   what it measured
                           ["done"]                     the agent's work is over: exit 0

Binary messages carry a worker slot's frames: one byte, the slot (0..workers-1), then the frame's
payload exactly as `load.wire` has it between a runner and a local worker (a WebSocket message is
framed already, so no length prefix). A message of the slot byte alone is the end of that slot's
stream (from the coordinator: close the worker's stdin, which aborts a worker still running;
from the agent: the worker's stdout ended). The first payload to a slot is its shard, signed:
HMAC-SHA256(token, "latbench-shard\0" + nonce + "\0" + slot + "\0" + pickled) (32 bytes), then
the pickled `load.worker.Shard`. The agent checks the MAC with its own nonce and the slot the
message came for before anything unpickles it, since unpickling runs whatever code the bytes
name: only a peer that holds the token can have a shard run, and a shard recorded off one
connection or slot is refused on any other. An eavesdropper on plain ws:// still reads the
shards (the target's URL and headers, the workload) and the records; it cannot connect as an
agent, replay one's handshake, or have an agent run anything.

Clocks: the coordinator sends `["ping", t1]`, the agent answers with its own clock's reading, the
coordinator reads t3 when the answer arrives. If the two one-way trips were equal, the agent read
its clock at the coordinator's (t1 + t3) / 2, so offset = t_agent - (t1 + t3) / 2 (agent minus
coordinator); whatever the asymmetry, the truth lies within (t3 - t1) / 2 of that. Of several
exchanges the one with the shortest round trip has the tightest bound (`best_sample`), as NTP
does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from latbench.load.wire import MAX_FRAME
from latbench.records.record import location_problem
from latbench.shared.errors import SpecError
from latbench.shared.secrets import read_secret_file

# The code's own version, read off the package: `from latbench import __version__` would import
# the package face, which names every stage (run among them, above this one: .importlinter).
# The face is always loaded before any of its modules, and reading the attribute loads nothing.
__version__: str = sys.modules["latbench"].__version__
PROTOCOL = 1
PATH = "/v1/agents"
DEFAULT_PORT = 8790
TOKEN_ENV = "LATBENCH_AGENT_TOKEN"
NONCE_HEADER = "X-Latbench-Nonce"
REFUSED_HEADER = "X-Latbench-Refused"  # a 401's reason, for the agent to say
# How far a nonce's time may lie from the coordinator's wall clock, and so how long a seen one
# is kept: a handshake recorded longer ago than this is refused for its age instead.
NONCE_WINDOW_S = 120
_NONCE = re.compile(r"([0-9]{1,15})-[0-9a-f]{32}")
# Each MAC's purpose goes first, so that no one of them can stand for another.
_AUTH = b"latbench-agent-auth\0"
_COORDINATOR = b"latbench-coordinator\0"
_SHARD = b"latbench-shard\0"
# Tests only: added to every clock reading the agent reports (its pongs and the instants in its
# workers' frames) and taken off the instants it is sent, as if its clock were that far off.
SKEW_ENV = "LATBENCH_AGENT_CLOCK_SKEW_NS"
MAC_SIZE = hashlib.sha256().digest_size
PINGS = 16  # clock exchanges per estimate
# The largest message either side takes: a slot byte, a MAC and the largest frame.
MAX_MESSAGE = 1 + MAC_SIZE + MAX_FRAME
MIN_TOKEN = 16  # characters; `openssl rand -hex 32` gives 64
MAX_WORKERS = 255  # a slot is one byte
HEARTBEAT_S = 10.0  # WebSocket pings: a silent peer (a cut cable) is found in at most 1.5x this


class ProtocolError(ValueError):
    """A message that is not what the protocol allows; the text says what it should have been."""


def _mac(token: str, *parts: bytes) -> bytes:
    return hmac.new(token.encode(), b"".join(parts), hashlib.sha256).digest()


def make_nonce(now_ms: int | None = None) -> str:
    """A connection's nonce: the wall clock's Unix milliseconds (so that an old one can be told
    apart without remembering it forever) and 128 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{ms}-{secrets.token_hex(16)}"


def auth_proof(token: str, nonce: str) -> str:
    """What the agent sends as its bearer: proof it holds the token, useless for any other
    nonce, and from which the token cannot be had."""
    return _mac(token, _AUTH, nonce.encode()).hex()


def auth_headers(token: str, nonce: str) -> dict[str, str]:
    """The agent's handshake headers for one connection."""
    return {"Authorization": f"Bearer {auth_proof(token, nonce)}", NONCE_HEADER: nonce}


def coordinator_proof(token: str, nonce: str) -> str:
    """What the coordinator's welcome carries: proof to the agent that it holds the token too."""
    return _mac(token, _COORDINATOR, nonce.encode()).hex()


def coordinator_proven(proof: object, token: str, nonce: str) -> bool:
    """Whether a welcome's proof is the token's for this nonce (constant time)."""
    if not isinstance(proof, str):
        return False
    return hmac.compare_digest(proof.encode(), coordinator_proof(token, nonce).encode())


def sign(token: str, nonce: str, slot: int, shard: bytes) -> bytes:
    """The shard as it travels to `slot` of the connection of `nonce`: its MAC, then the
    pickled bytes."""
    return _mac(token, _SHARD, nonce.encode(), b"\0%d\0" % slot, shard) + shard


def verify(token: str, nonce: str, slot: int, signed: bytes) -> bytes:
    """The pickled shard of a signed message, or ProtocolError when its MAC is not the token's
    for this connection's nonce and this slot (then nothing may unpickle it)."""
    if len(signed) <= MAC_SIZE:
        raise ProtocolError(f"a shard of {len(signed)} bytes is shorter than its signature")
    mac, shard = signed[:MAC_SIZE], signed[MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(token, _SHARD, nonce.encode(), b"\0%d\0" % slot, shard)):
        raise ProtocolError(
            "the shard's signature is not the token's for this connection and slot: refused, "
            "not unpickled"
        )
    return shard


class Nonces:
    """The coordinator's check of an agent's handshake: the proof, the nonce's age, and that
    it was not seen before (kept for `NONCE_WINDOW_S`, after which its age refuses it)."""

    def __init__(self, window_s: int = NONCE_WINDOW_S) -> None:
        self.window_ms = window_s * 1000
        self._seen: dict[str, int] = {}  # nonce -> its time, Unix ms

    def check(
        self, authorization: str | None, nonce: str | None, token: str, now_ms: int | None = None
    ) -> str | None:
        """None when the headers prove the token for a fresh nonce (which is then taken);
        else why not, in words fit for the refused agent."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        given = (authorization or "").removeprefix("Bearer ").strip()
        match = _NONCE.fullmatch(nonce or "")
        # The MAC is compared even when the nonce is malformed, so that timing says nothing.
        good = auth_proof(token, nonce or "")
        if not hmac.compare_digest(given.encode(), good.encode()) or match is None:
            return "the agent token is missing or wrong"
        assert nonce is not None
        off_s = (int(match.group(1)) - now) / 1000
        if abs(off_s) * 1000 > self.window_ms:
            return (
                f"the agent's wall clock is {off_s:+.0f} s from the coordinator's (over "
                f"{self.window_ms // 1000} s): set both right (NTP)"
            )
        for old in [n for n, t in self._seen.items() if abs(now - t) > self.window_ms]:
            del self._seen[old]
        if nonce in self._seen:
            return "a handshake seen before (a replay): refused"
        self._seen[nonce] = int(match.group(1))
        return None


def check_token(token: str, source: str) -> str:
    """A token fit to sign shards: not empty, not short. ValueError naming `source` else."""
    if len(token) < MIN_TOKEN:
        raise ValueError(
            f"{source}: the agent token is {len(token)} characters; give at least {MIN_TOKEN} "
            "(e.g. openssl rand -hex 32)"
        )
    return token


def read_token(file: Path | None, file_field: str, env: str = TOKEN_ENV) -> str:
    """The agents' shared token: from `file` (named `file_field` in errors) when given, else from
    the environment variable `env`; SpecError naming where it should have come from when there
    is none, or when it is too short to sign shards with. The coordinator's flags, the agent's
    and the service's config all read it here."""
    if file is not None:
        token = read_secret_file(file, file_field)
        where = f"{file_field} {file}"
    else:
        token = os.environ.get(env, "").strip()
        where = f"environment variable {env}"
    if not token:
        raise SpecError(f"no agent token: give {file_field} FILE or set {env}")
    try:
        return check_token(token, where)
    except ValueError as e:
        raise SpecError(str(e)) from None


def control(*parts: Any) -> str:
    """A text message."""
    return orjson.dumps(parts).decode()


def parse_control(text: str) -> list[Any]:
    """A text message as its array; ProtocolError when it is not one with a name first."""
    try:
        m = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"a text message that is not JSON ({e})") from None
    if not isinstance(m, list) or not m or not isinstance(m[0], str):
        raise ProtocolError(f"a text message that is not a named array: {text[:80]!r}")
    return m


@dataclass(frozen=True, slots=True)
class Hello:
    """Who an agent says it is."""

    protocol: int
    version: str
    index: int | None  # None: the coordinator picks the lowest free one
    location: str | None
    host: str
    pid: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "version": self.version,
            "index": self.index,
            "location": self.location,
            "host": self.host,
            "pid": self.pid,
            "workers": self.workers,
        }


def hello(index: int | None, location: str | None, workers: int) -> Hello:
    return Hello(PROTOCOL, __version__, index, location, socket.gethostname(), os.getpid(), workers)


def _int(d: dict[str, Any], name: str, low: int, high: int, optional: bool = False) -> int | None:
    value = d.get(name)
    if value is None and optional:
        return None
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"hello: {name} is {value!r:.40}, not an integer from {low} to {high}")
    return value


def parse_hello(m: list[Any]) -> Hello:
    """The agent's hello, checked field by field; ProtocolError naming the first bad one. The
    protocol and latbench versions must be the coordinator's: a shard is pickled Python objects,
    which only the same latbench reads back as they were."""
    if m[0] != "hello" or len(m) != 2 or not isinstance(m[1], dict):
        raise ProtocolError(f"expected a hello first, got {m[0]!r:.40}")
    d = m[1]
    protocol = _int(d, "protocol", 0, 1 << 16)
    if protocol != PROTOCOL:
        raise ProtocolError(f"the agent speaks protocol {protocol}, this coordinator {PROTOCOL}")
    version = d.get("version")
    if version != __version__:
        raise ProtocolError(
            f"the agent runs latbench {version!r:.40}, the coordinator {__version__}: run the "
            "same version on both (a shard travels as pickled Python objects)"
        )
    location = d.get("location")
    problem = None if location is None else location_problem(location)
    if problem is not None:
        raise ProtocolError(f"hello: location {location!r:.80} {problem}")
    host = d.get("host")
    if not isinstance(host, str) or not host.isprintable() or len(host) > 255:
        raise ProtocolError(f"hello: host {host!r:.80} is not a host name")
    return Hello(
        protocol=PROTOCOL,
        version=__version__,
        index=_int(d, "index", 0, 1 << 20, optional=True),
        location=location,
        host=host or "?",
        pid=_int(d, "pid", 0, 1 << 31) or 0,
        workers=_int(d, "workers", 1, MAX_WORKERS) or 1,
    )


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One ping/pong: t1 sent and t3 received on the coordinator's clock, t_agent the agent's
    reading in between."""

    t1: int
    t_agent: int
    t3: int

    @property
    def rtt_ns(self) -> int:
        return self.t3 - self.t1

    @property
    def offset_ns(self) -> int:
        """The agent's clock minus the coordinator's, were both trips equally long."""
        return self.t_agent - (self.t1 + self.t3) // 2

    @property
    def uncertainty_ns(self) -> int:
        """How far the true offset may lie from `offset_ns`: half the round trip (plus the
        nanosecond the halving may have rounded off)."""
        return (self.t3 - self.t1 + 1) // 2


def best_sample(samples: Sequence[ClockSample]) -> ClockSample:
    """The sample with the shortest round trip: the tightest bound of them all."""
    if not samples:
        raise ValueError("no clock samples")
    return min(samples, key=lambda s: s.rtt_ns)


def coordinator_url(text: str) -> str:
    """The WebSocket URL of a coordinator given as `ws://HOST:PORT[/v1/agents]`,
    `http://HOST:PORT`, or a bare `HOST[:PORT]` (port 8790). ValueError naming the text."""
    raw = text.strip()
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urlsplit(raw)
    scheme = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"--coordinator {text!r}: give ws://HOST:PORT (or http://HOST:PORT)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--coordinator {text!r}: the port is not a number") from None
    netloc = parts.netloc if port is not None else f"{parts.netloc}:{DEFAULT_PORT}"
    path = parts.path.rstrip("/") or PATH
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (all interfaces) -> (host, port). ValueError naming it."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "0.0.0.0", text.strip()
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 0.0.0.0:{DEFAULT_PORT}")
    return host, int(port)
