"""`python -m bench.sotimestamping`: how late does user space see streamed bytes that the kernel
already has? The answer bounds what kernel receive timestamps (SO_TIMESTAMPING on TCP) could
remove from an event's arrival time.

K streams from the simulator are read on one event loop through raw sockets, first plainly (to
price the timestamps), then with software receive timestamps on. For every read, the kernel's
timestamp of the data (CLOCK_REALTIME, the only clock the kernel stamps sockets with) is compared
with the instant the loop's reader ran. The reader does nothing else, so this is the floor;
latbench's aiohttp path does more per read and would see more. Results: one JSON line per K.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import time

import numpy as np
import uvloop

from latbench.sim import SimConfig, SimProcess

SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)  # Linux asm-generic value
SOF_RX_SOFTWARE = 1 << 3  # stamp incoming data in software, on arrival in the stack
SOF_SOFTWARE = 1 << 4  # report software timestamps
_TS3 = struct.Struct("qqqqqq")  # struct scm_timestamping: three timespecs, [0] is software


def request(port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "sim-model",
            "prompt": "a b c",
            "max_tokens": tokens,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def stream(port: int, tokens: int, gaps: list[int], cost: list[int], stamp: bool) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if stamp:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_RX_SOFTWARE | SOF_SOFTWARE)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request(port, tokens))
    done = loop.create_future()

    def readable() -> None:
        t0 = time.perf_counter_ns()
        seen = time.time_ns()
        try:
            data, anc, _, _ = sock.recvmsg(65536, 256) if stamp else (sock.recv(65536), [], 0, 0)
        except BlockingIOError:
            return
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                sec, nsec = _TS3.unpack_from(payload)[:2]
                gaps.append(seen - (sec * 1_000_000_000 + nsec))
        cost.append(time.perf_counter_ns() - t0)
        if not data or b"[DONE]" in data:
            loop.remove_reader(sock)
            done.set_result(None)

    loop.add_reader(sock, readable)
    await done
    sock.close()


async def measure(port: int, k: int, tokens: int) -> dict[str, float]:
    gaps: list[int] = []
    cost: list[int] = []
    plain: list[int] = []
    await asyncio.gather(*(stream(port, tokens, [], plain, False) for _ in range(k)))
    await asyncio.gather(*(stream(port, tokens, gaps, cost, True) for _ in range(k)))
    g = np.asarray(gaps) / 1e3
    return {
        "streams": k,
        "reads": len(gaps),
        "kernel_to_reader_us_p50": float(np.percentile(g, 50)),
        "kernel_to_reader_us_p99": float(np.percentile(g, 99)),
        "kernel_to_reader_us_max": float(g.max()),
        "read_cost_us_p50_recvmsg_with_stamp": float(np.percentile(np.asarray(cost) / 1e3, 50)),
        "read_cost_us_p50_plain_recv": float(np.percentile(np.asarray(plain) / 1e3, 50)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sotimestamping", description=__doc__)
    ap.add_argument("--streams", default="1,64,256")
    ap.add_argument("--itl", type=float, default=0.01)
    ap.add_argument("--tokens", type=int, default=200)
    ns = ap.parse_args()
    with SimProcess(SimConfig(ttft=0.01, itl=ns.itl)) as sim:
        port = int(sim.url.rsplit(":", 1)[1])
        for k in (int(x) for x in ns.streams.split(",")):
            print(json.dumps(uvloop.run(measure(port, k, ns.tokens))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
