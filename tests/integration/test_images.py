"""Image requests end to end, in every chat-like API kind: a spec with `workload.images` runs
against the simulator, which counts each request's images and adds `ttft_per_image` to its TTFT
for each one it encodes (those its prefix cache does not already hold).
The simulator's own account (`/sim/truth`) must see each request's images as the client's record
counts them, its planned TTFT must grow by exactly `ttft_per_image` per image, its first token
must leave no earlier than that plan and reach the client after it left; the summary's image
counts are the records' and survive a replay of the records file."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kit.cli import latbench
from kit.sim import personalities, truth, truth_of
from rich.console import Console

from latbench.records.record import read_records
from latbench.run import run_benchmark
from latbench.sim import SimProcess
from latbench.spec import load_spec
from latbench.spec.target import SIM_API
from latbench.summary.summary import summarize_file

TTFT, PER_IMAGE = 0.02, 0.2
REQUESTS = 10
# Seed 3 draws 0, 1, 2 and 3 images among the first 10 requests.
IMAGES = {"count": {"kind": "uniform", "min": 0, "max": 3}, "width": 48, "height": 32}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, SimProcess]]:
    """One simulator per personality, each charging PER_IMAGE of TTFT for every image."""
    with personalities(ttft=TTFT, itl=0.002, ttft_per_image=PER_IMAGE) as procs:
        yield procs


def mm_cache(url: str) -> tuple[float, float]:
    """The simulator's multi-modal cache counters (vLLM's names): images queried, images hit."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()

    def value(name: str) -> float:
        (line,) = [x for x in lines if x.startswith(name + "{")]
        return float(line.rsplit(" ", 1)[1])

    return value("vllm:mm_cache_queries_total"), value("vllm:mm_cache_hits_total")


def reset(url: str) -> None:
    req = urllib.request.Request(url + "/sim/truth/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


@pytest.mark.parametrize("api", ["chat", "anthropic", "responses"])
async def test_ttft_grows_by_the_per_image_cost_the_server_charged(
    servers: dict[str, SimProcess], api: str, tmp_path: Path
) -> None:
    sim = servers[SIM_API[api]]
    reset(sim.url)
    spec = load_spec(
        {
            "target": {"base_url": sim.url, "api": api},
            # One user: requests one after another, in the simulator's order too. "words": no
            # calibration probes among the served requests.
            "load": {"concurrency": 1, "requests": REQUESTS},
            "workload": {
                "input_tokens": 8,
                "output_tokens": 4,
                "tokenizer": "words",
                "seed": 3,
                "images": IMAGES,
            },
            "output_dir": str(tmp_path),
        }
    )
    result = await run_benchmark(spec, sim.url, Console(file=io.StringIO()))
    records = sorted(read_records(result.records_path).records, key=lambda r: r.seq)
    assert [r.error_detail for r in records if r.error] == []
    counts = [r.images for r in records]
    assert set(counts) == {0, 1, 2, 3}, counts

    served = [e for e in await truth(sim.url) if e["events_ns"]]
    assert [e["images"] for e in served] == counts  # the server saw what the client counted
    for r, e in zip(records, served, strict=True):
        planned = TTFT + PER_IMAGE * r.images
        assert e["ttft_model_s"] == pytest.approx(planned, abs=1e-6)
        # The server wrote the first token after its plan (the event loop's timers may fire up
        # to a millisecond early), and the client read it after that.
        first = e["events_ns"][0]
        assert first - e["arrival_ns"] >= (planned - 0.002) * 1e9, (r.images, e)
        assert r.ev_t[0] >= first
    # What the client measured shows it plainly: 3 images plan 31x the TTFT of none.
    ttft = {k: statistics.median((r.ev_t[0] - r.t_sent) / 1e9 for r in records if r.images == k)
            for k in (0, 3)}  # fmt: skip
    assert ttft[3] > 3 * ttft[0], ttft

    s = result.summary.images
    assert s is not None
    assert (s.requests, s.images) == (REQUESTS, sum(counts))
    assert s.with_images == sum(1 for c in counts if c)
    assert s.bytes == sum(r.image_bytes for r in records) > 0
    # PNG of 48x32 noise: 3 bytes a pixel and a filter byte a row, plus headers.
    assert all(r.image_bytes >= r.images * 32 * (1 + 3 * 48) for r in records)
    results = json.loads(result.results_path.read_text())
    assert results["summary"]["images"] == s.to_dict()
    replayed = summarize_file(read_records(result.records_path), spec).images
    assert replayed == s


def test_every_image_is_new_to_the_server_and_the_same_again_with_the_seed(
    sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """The server keys images by their data, as vLLM's multi-modal cache does: a run's images
    never hit one another (no request can be served from another's image), and a second run with
    the same seed sends the same images, every one a hit."""
    proc = sim(ttft=TTFT, itl=0.002)

    async def run() -> None:
        spec = load_spec(
            {
                "target": {"base_url": proc.url, "api": "chat"},
                "load": {"concurrency": 2, "requests": 8},
                "workload": {
                    "input_tokens": 8,
                    "output_tokens": 4,
                    "tokenizer": "words",
                    "images": {"count": 2, "width": 16, "height": 16, "format": "jpeg"},
                },
                "output_dir": str(tmp_path),
            }
        )
        result = await run_benchmark(spec, proc.url, Console(file=io.StringIO()))
        assert result.summary.requests.succeeded == 8

    asyncio.run(run())
    assert mm_cache(proc.url) == (16, 0)
    asyncio.run(run())
    assert mm_cache(proc.url) == (32, 16)


def test_the_flags_run_images_and_the_summaries_state_them(tmp_path: Path) -> None:
    """`latbench run --images ...` against the built-in simulator: the terminal summary,
    `latbench summary` of its records and the HTML and Markdown reports state the same image
    counts as results.json."""
    out, spec_file = tmp_path / "out", tmp_path / "spec.yaml"
    # Validity limits a shared 2-core machine meets: the exit status is not what this tests.
    spec_file.write_text("validity: {ttft_tolerance: 50ms, itl_tolerance: 50ms}\n")
    flags = ["--spec", str(spec_file), "--requests", "6", "--concurrency", "2", "--warmup", "0"]
    flags += ["--out", str(out)]
    done = latbench(
        "run", *flags, "--images", "2", "--image-size", "24x16", "--image-format", "jpeg"
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr)
    (run,) = out.iterdir()
    images = json.loads((run / "results.json").read_text())["summary"]["images"]
    assert (images["total"], images["with_images"], images["requests"]) == (12, 6, 6)
    line = "12 images in 6 of 6 requests (mean 2.00 a"
    assert line in done.stdout
    again = latbench("summary", str(run / "records.jsonl"))
    assert again.returncode == 0 and line in again.stdout, again.stderr
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    report = latbench("report", str(run), "--html", str(html), "--md", str(md))
    assert report.returncode == 0, report.stderr
    whole = "12 images in 6 of 6 requests (mean 2.00 a request, "
    assert f"<td>images</td><td>{whole}" in html.read_text()
    assert f"Images: {whole}" in md.read_text()

    bad = latbench("run", *flags, "--images", "1", "--image-size", "24")
    assert bad.returncode != 0 and "--image-size '24': write it as WIDTHxHEIGHT" in bad.stderr
    bad = latbench("run", *flags, "--api", "completions", "--images", "1")
    assert bad.returncode != 0
    assert "workload.images: target.api 'completions'" in bad.stderr


@pytest.mark.parametrize(
    ("image_tokens", "prefix_cache", "encoded"),
    [(4, True, "new"), (0, True, "new"), (4, False, "all")],
)
def test_a_sessions_turns_resend_its_images_and_pay_for_the_new_ones(
    sim: Callable[..., SimProcess],
    tmp_path: Path,
    image_tokens: int,
    prefix_cache: bool,
    encoded: str,
) -> None:
    """Sessions of 3 turns, one new image a turn: turn k's request carries the k + 1 images of
    its conversation (its record says so, and the server saw as many), and the resent ones hit
    the server's multi-modal cache (the same data). The server encodes, and charges
    ttft_per_image for, only the images its prefix cache does not already hold, as vLLM skips
    the encoder for an image whose tokens are all computed: each turn's history (4-token blocks:
    8 words a message, 4 a reply, `image_tokens` an image, all whole blocks) is cached, so each
    turn pays for its one new image, whether an image is tokens of its own or none. With the
    prefix cache off, every turn pays for every image again."""
    proc = sim(
        ttft=TTFT,
        itl=0.002,
        ttft_per_image=PER_IMAGE,
        image_tokens=image_tokens,
        block_tokens=4,
        prefix_cache=prefix_cache,
    )
    spec = load_spec(
        {
            "target": {"base_url": proc.url, "api": "chat"},
            "load": {"concurrency": 1, "requests": 6},
            "workload": {
                "input_tokens": 8,
                "output_tokens": 4,
                "tokenizer": "words",
                "sessions": {"turns": 3},
                "images": {"count": 1, "width": 16, "height": 8},
            },
            "output_dir": str(tmp_path),
        }
    )
    result = asyncio.run(run_benchmark(spec, proc.url, Console(file=io.StringIO())))
    records = sorted(read_records(result.records_path).records, key=lambda r: r.t_sent)
    assert [r.error_detail for r in records if r.error] == []
    assert [(r.session, r.turn, r.images) for r in records] == [
        (s, t, t + 1) for s in (0, 1) for t in range(3)
    ]
    assert [r.image_bytes for r in records[:3]] == [n * records[0].image_bytes for n in (1, 2, 3)]
    served = [e for e in truth_of(proc.url) if e["events_ns"]]
    assert [e["images"] for e in served] == [r.images for r in records]
    want = [1 if encoded == "new" else r.images for r in records]
    assert [e["images_encoded"] for e in served] == want
    for n, e in zip(want, served, strict=True):
        assert e["ttft_model_s"] == pytest.approx(TTFT + PER_IMAGE * n, abs=1e-6)
    # What the prefix cache held: nothing at a session's first turn, its history after.
    first = [e["cached_tokens"] for r, e in zip(records, served, strict=True) if r.turn == 0]
    later = [e["cached_tokens"] for r, e in zip(records, served, strict=True) if r.turn > 0]
    assert first == [0, 0] and all(later) == prefix_cache, (first, later)
    # Each session: 1 + 2 + 3 images queried, the 0 + 1 + 2 resent ones hit.
    assert mm_cache(proc.url) == (12, 6)
    s = result.summary.images
    assert s is not None and (s.images, s.with_images) == (12, 6)
