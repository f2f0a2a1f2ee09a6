"""The service's HTTP client, for `latbench submit` and `latbench runs` (docs/service.md).

The server comes from `--server` or LATBENCH_SERVER; the token (needed to submit and cancel)
from LATBENCH_TOKEN or `--token-file`, never from a flag value, so it stays out of shell history
and `ps`. Every answer is read up to a bound, so a wrong or hostile server cannot fill this process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console

from latbench.client.reads import read_bounded
from latbench.records.rundir import RunDir
from latbench.render.terminal import render_summary
from latbench.shared.errors import LatbenchError, SpecError
from latbench.spec import load_spec
from latbench.summary.summary import summarize_file

SERVER_ENV = "LATBENCH_SERVER"
TOKEN_ENV = "LATBENCH_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8080"
API = "/api/v1"
REQUEST_TIMEOUT_S = 30.0
# The most of one JSON answer read from a service (a run with its summary is tens of KB); a
# larger one is not read further, so a wrong or hostile server cannot fill this process.
MAX_ANSWER_BYTES = 64 << 20


class RemoteError(LatbenchError):
    """The service could not be reached, or refused the request (the message says why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service")
    g.add_argument(
        "--server",
        metavar="URL",
        help=f"the service's root URL (default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    g.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the service's token (default: ${TOKEN_ENV})",
    )
    g.add_argument("--json", action="store_true", help="print the service's JSON")


class Client:
    def __init__(self, server: str, token: str | None) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            raise SpecError(f"this needs the service's token: set {TOKEN_ENV} or give --token-file")
        return {"Authorization": f"Bearer {self._token}"}

    async def call(self, method: str, path: str, body: Any = None, auth: bool = False) -> Any:
        assert self._session is not None
        url = self.server + path
        try:
            async with self._session.request(
                method,
                url,
                data=None if body is None else orjson.dumps(body),
                headers={**self._headers(auth), "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as resp:
                data = await read_bounded(resp.content, MAX_ANSWER_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RemoteError(f"cannot reach {self.server}: {_why(e)}") from None
        if len(data) > MAX_ANSWER_BYTES:
            raise RemoteError(
                f"{method} {path}: the answer is over {MAX_ANSWER_BYTES >> 20} MiB; is "
                f"{self.server} a latbench service?",
                status,
            )
        if status >= 400:
            raise RemoteError(f"{method} {path}: HTTP {status}: {_message(data)}", status)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise RemoteError(
                f"{method} {path}: HTTP {status}, but the answer is not JSON; is {self.server} "
                "a latbench service?",
                status,
            ) from None

    async def stream(self, path: str) -> AsyncIterator[bytes]:
        """The response body of a GET, piece by piece."""
        assert self._session is not None
        try:
            async with self._session.get(self.server + path) as resp:
                if resp.status >= 400:
                    raise RemoteError(
                        f"GET {path}: HTTP {resp.status}: "
                        f"{_message(await resp.content.read(1 << 16))}",
                        resp.status,
                    )
                async for piece in resp.content.iter_any():
                    yield piece
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RemoteError(f"lost {self.server}: {_why(e)}") from None


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _message(data: bytes) -> str:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode(errors="replace")[:500]
    return (str(body.get("error", body)) if isinstance(body, dict) else str(body))[:500]


def client_from_args(ns: argparse.Namespace) -> Client:
    server = ns.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if ns.token_file is not None:
        try:
            token = ns.token_file.read_text().strip()
        except OSError as e:
            raise SpecError(f"--token-file {ns.token_file}: {e.strerror}") from None
    return Client(server, token)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


async def render_remote_summary(client: Client, run_id: str, console: Console) -> None:
    """Fetch the run's records and render them as `latbench run` does."""
    with tempfile.TemporaryDirectory(prefix="latbench-") as d:
        run = RunDir(Path(d))
        with run.records.open("wb") as f:
            async for piece in client.stream(f"{API}/runs/{run_id}/records"):
                f.write(piece)
        records = run.read_records()
    spec = load_spec(records.header.spec if records.header else {}, source=f"run {run_id}")
    render_summary(summarize_file(records, spec), console)
