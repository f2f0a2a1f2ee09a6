"""`python -m bench.span_wire`: where the time "outside the server" goes, from the wire.

The per-request split (docs/metrics.md, "Per-request split") calls outside the server whatever
lies between latbench's stamps and vLLM's span: the network, vLLM's HTTP parsing and framing,
and latbench's own stamping. This tells them apart with packet timestamps: it captures
loopback traffic on vLLM's port (`tcpdump`, nanosecond stamps) while `latbench run
--otlp-receiver` runs, finds each request's connection by its X-Request-Id, places every SSE
content chunk at the packet that completed it (`tshark`), and sets the packets beside

- latbench's stamps (send, first and last token event), moved to wall time by the records
  header's clock anchor: how late latbench stamped what the wire shows;
- the span's first token (its start, the arrival, + its TTFT) and last: how long vLLM took to
  put a token on the wire after stamping it.

    eval "$(tests/vllm/setup.sh)"
    apt-get install tcpdump tshark        # root: tcpdump captures on lo
    python -m bench.span_wire --out /tmp/wire               # ~3 minutes on 2 cores
    python -m bench.span_wire --out /tmp/wire-pinned --pin 0 # vLLM on core 0 only

It starts the e2e stage's vLLM (tiny random model, CPU) with tracing to latbench's receiver,
runs 1 and 16 streams (64-token prompts, 16 output tokens, chat), and prints per figure its
p10 / p50 / p90 in ms, then the reviewer's raw-socket probe when --probe names it. docs/vllm.md,
"Per-request server spans", reports what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from latbench.records import read_records
from latbench.vllm import VllmServer
from latbench.vllm.launch import free_port

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}
CHUNK = re.compile(rb"data: (\{.*?\})\r?\n\r?\n", re.S)
# A stream's segments: (packet's wall ns, from the server?, payload).
Segments = list[tuple[int, bool, bytes]]


def capture(port: int, path: Path) -> subprocess.Popen[str]:
    """tcpdump on loopback, vLLM's port only, nanosecond stamps; returns once it listens."""
    p = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-s", "0", "--time-stamp-precision=nano", "-U", "-w", str(path),
         f"tcp port {port}"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()
    if "listening" not in line:
        raise SystemExit(f"tcpdump did not start: {line.strip()}")
    return p


def streams_of(pcap: Path, server_port: int) -> dict[int, Segments]:
    """Each TCP stream's payload-carrying segments, in capture order."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.len>0", "-T", "fields", "-e", "frame.time_epoch",
         "-e", "tcp.stream", "-e", "tcp.srcport", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    streams: dict[int, Segments] = {}
    for line in out.splitlines():
        t, stream, sport, payload = line.split("\t")
        sec, _, frac = t.partition(".")
        t_ns = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9])
        data = bytes.fromhex(payload.replace(":", ""))
        streams.setdefault(int(stream), []).append((t_ns, int(sport) == server_port, data))
    return streams


def content_ends(body: bytes) -> list[int]:
    """Where each SSE chunk of a generated token ends in a response body: a delta with content,
    even empty (a byte-level token that completes no character yet), but not vLLM's role-only
    first chunk."""
    ends = []
    for m in CHUNK.finditer(body):
        try:
            choices = json.loads(m.group(1)).get("choices") or []
        except ValueError:
            continue
        delta = (choices[0].get("delta") or {}) if choices else {}
        if "content" in delta and "role" not in delta:
            ends.append(m.end())
    return ends


def wire_times(streams: dict[int, Segments], run_id: str) -> dict[int, dict[str, Any]]:
    """seq -> the wall ns its request's last byte left and each content chunk was complete."""
    request_id = re.compile(rb"(?i)x-request-id: " + re.escape(run_id.encode()) + rb"-(\d+)")
    # Per request on a connection: [seq, sent at, response body, (wall ns, body length by then)].
    requests: list[tuple[int, int, bytearray, list[tuple[int, int]]]] = []
    for segs in streams.values():
        sent = b""
        current: tuple[int, int, bytearray, list[tuple[int, int]]] | None = None
        for t, from_server, data in segs:
            if from_server:
                if current is not None:
                    current[2].extend(data)
                    current[3].append((t, len(current[2])))
                continue
            sent += data
            head, sep, rest = sent.partition(b"\r\n\r\n")
            m = request_id.search(head)
            length = re.search(rb"(?i)content-length: (\d+)", head)
            if m and sep and length and len(rest) >= int(length.group(1)):
                current = (int(m.group(1)), t, bytearray(), [])
                requests.append(current)
                sent = b""
    out: dict[int, dict[str, Any]] = {}
    for seq, sent_t, body, marks in requests:
        chunks = [next(t for t, n in marks if n >= end) for end in content_ends(bytes(body))]
        out[seq] = {"sent": sent_t, "chunks": chunks}
    return out


def analyse(run_dir: Path, pcap: Path, server_port: int) -> dict[str, Any]:
    f = read_records(run_dir / "records.jsonl")
    assert f.header is not None
    to_wall = f.header.clock_wall_ns - f.header.clock_monotonic_ns
    wire = wire_times(streams_of(pcap, server_port), f.header.run_id)
    spans = {s.trace_id: s for s in f.spans}
    rows: list[dict[str, float]] = []
    for r in f.records:
        w = wire.get(r.seq)
        s = spans.get(r.trace_id or "")
        if r.phase != "measure" or not r.ok or not r.ev_t or w is None or not w["chunks"]:
            continue
        if s is None or s.start_unix_ns is None or s.ttft_s is None or s.e2e_s is None:
            continue
        first, last = w["chunks"][0], w["chunks"][-1]
        rows.append({
            "client_ttft": (r.ev_t[0] - r.t_sent) / 1e6,
            "client_ttft_bound_ev_late0": (r.ev_late[0] if r.ev_late else float("nan")) / 1e6,
            "wire_ttft": (first - w["sent"]) / 1e6,
            "wire_spread_first_to_last": (last - first) / 1e6,
            "wire_distinct_chunk_times": float(len(set(w["chunks"]))),
            "stamp_minus_wire_send": (r.t_sent + to_wall - w["sent"]) / 1e6,
            "stamp_minus_wire_first_event": (r.ev_t[0] + to_wall - first) / 1e6,
            "stamp_minus_wire_last_event": (r.ev_t[-1] + to_wall - last) / 1e6,
            "server_ttft": s.ttft_s * 1e3,
            "span_start_minus_wire_send": (s.start_unix_ns - w["sent"]) / 1e6,
            "wire_first_minus_server_first_token": (first - s.start_unix_ns - s.ttft_s * 1e9) / 1e6,
            "wire_last_minus_server_last_token": (last - s.start_unix_ns - s.e2e_s * 1e9) / 1e6,
        })  # fmt: skip
    figures = {}
    for name in rows[0] if rows else ():
        v = np.asarray([row[name] for row in rows])
        v = v[~np.isnan(v)]
        if v.size:
            figures[name] = [round(float(x), 3) for x in np.percentile(v, [10, 50, 90])]
    results = json.loads((run_dir / "results.json").read_text())
    validity = results["summary"]["validity"]
    return {"n": len(rows), "p10_p50_p90_ms": figures, "client_bound": validity["client_bound"],
            "reasons": validity["reasons"], "server_spans": results["server_spans"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.span_wire", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--streams", default="1:22,16:66", help="STREAMS:REQUESTS,... (2 warm-up)")
    ap.add_argument("--pin", help="run vLLM on these CPUs only (taskset -c)")
    ap.add_argument("--probe", type=Path, help="a raw-socket probe script, given vLLM's port")
    ns = ap.parse_args(argv)
    model, python = os.environ.get("LATBENCH_VLLM_MODEL"), os.environ.get("LATBENCH_VLLM_PYTHON")
    if not model or not python:
        raise SystemExit('no vLLM here: eval "$(tests/vllm/setup.sh)" first')
    os.environ.update(ENV)
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.pin:
        wrapper = ns.out / "pinned-python"
        wrapper.write_text(f'#!/bin/sh\nexec taskset -c {ns.pin} {python} "$@"\n')
        wrapper.chmod(0o755)
        python = str(wrapper)
    receiver, port = free_port(), free_port()
    args = ["--model", model, "--served-model-name", "tiny", "--max-model-len", "2048",
            "--dtype", "float32", "--enforce-eager",
            "--otlp-traces-endpoint", f"http://127.0.0.1:{receiver}/v1/traces"]  # fmt: skip
    report: dict[str, Any] = {}
    with VllmServer(args, port, ns.out / "vllm.log", python=python) as server:
        for item in ns.streams.split(","):
            streams, requests = item.split(":")
            out, pcap = ns.out / f"s{streams}", ns.out / f"s{streams}.pcap"
            dump = capture(port, pcap)
            p = subprocess.run(
                [sys.executable, "-m", "latbench", "run", "--target", server.url, "--api", "chat",
                 "--out", str(out), "--otlp-receiver", f"127.0.0.1:{receiver}",
                 "--concurrency", streams, "--requests", requests, "--warmup-requests", "2",
                 "--input-tokens", "64", "--output-tokens", "16", "--ignore-eos",
                 "--server-metrics", "off"],
                capture_output=True, text=True,
            )  # fmt: skip
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
            (ns.out / f"s{streams}.log").write_text(p.stdout + p.stderr)
            (run_dir,) = (d for d in out.iterdir() if d.is_dir())
            a = analyse(run_dir, pcap, port)
            report[streams] = a
            verdict = "client-bound" if a["client_bound"] else "valid"
            print(f"streams={streams} (exit {p.returncode}, {verdict}), {a['n']} requests:")
            for name, (p10, p50, p90) in a["p10_p50_p90_ms"].items():
                print(f"  {name:40s} {p10:9.3f} {p50:9.3f} {p90:9.3f}")
        if ns.probe is not None:
            probe = subprocess.run([sys.executable, str(ns.probe), str(port)],
                                   capture_output=True, text=True)  # fmt: skip
            print(probe.stdout + probe.stderr[-2000:])
            report["probe"] = probe.stdout
    (ns.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
