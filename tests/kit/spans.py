"""A run whose records file carries the server's spans, for the tests of what latbench shows
of them (terminal, Markdown, CSV, HTML), made of real parts: `latbench run` against a
simulator child process that exports vLLM's span of every request (sim/spans.py) to an OTLP/HTTP
receiver on 127.0.0.1 here, each span decoded from its OTLP JSON and written into the records
file as a span line, before the footer, where a run's own receiver puts them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kit.cli import latbench
from kit.sim import FAST
from latbench.records.record import ServerSpan, encode_span
from latbench.sim import SimConfig, SimProcess

_LATENCIES = {
    "gen_ai.latency.time_to_first_token": "ttft_s",
    "gen_ai.latency.e2e": "e2e_s",
    "gen_ai.latency.time_in_queue": "queue_s",
    "gen_ai.latency.time_in_model_prefill": "prefill_s",
    "gen_ai.latency.time_in_model_decode": "decode_s",
    "gen_ai.latency.time_in_model_inference": "inference_s",
}
_COUNTS = {
    "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "gen_ai.usage.completion_tokens": "completion_tokens",
}


class _Receiver(ThreadingHTTPServer):
    bodies: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver() -> Iterator[_Receiver]:
    """An OTLP/HTTP traces endpoint in a thread: `.bodies` holds each POSTed JSON body."""
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def server_spans(bodies: list[dict[str, Any]]) -> list[ServerSpan]:
    """OTLP JSON bodies read as the records file's span lines."""
    out = []
    for body in bodies:
        for rs in body["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    fields: dict[str, Any] = {}
                    for kv in s["attributes"]:
                        key, value = kv["key"], kv["value"]
                        if key in _LATENCIES:
                            fields[_LATENCIES[key]] = float(value["doubleValue"])
                        elif key in _COUNTS:
                            fields[_COUNTS[key]] = int(value["intValue"])
                        elif key == "gen_ai.request.id":
                            fields["request_id"] = value["stringValue"]
                    out.append(
                        ServerSpan(
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            name=s["name"],
                            received_ns=time.monotonic_ns(),
                            start_unix_ns=int(s["startTimeUnixNano"]),
                            end_unix_ns=int(s["endTimeUnixNano"]),
                            **fields,
                        )
                    )
    return out


def run_with_spans(out: Path, *run_args: str, **sim: Any) -> Path:
    """`latbench run RUN_ARGS` against a tracing simulator (SimConfig fields `sim`, FAST
    unless told); its run directory, whose records file holds the spans."""
    with receiver() as r:
        url = f"http://127.0.0.1:{r.server_address[1]}/v1/traces"
        config = SimConfig.model_validate(
            {**FAST, "otlp_traces_endpoint": url, "span_delay_s": 0.05, **sim}
        )
        with SimProcess(config) as proc:
            p = latbench("run", "--out", str(out), "--target", proc.url, *run_args)
            assert p.returncode in (0, 4), p.stderr  # 4: client-bound on a busy machine
        # Stopping the simulator flushed its last spans: all are here.
        spans = server_spans(r.bodies)
    (records,) = out.glob("*/records.jsonl")
    lines = records.read_bytes().splitlines(keepends=True)
    assert b'"footer"' in lines[-1]
    records.write_bytes(b"".join([*lines[:-1], *map(encode_span, spans), lines[-1]]))
    return records.parent
