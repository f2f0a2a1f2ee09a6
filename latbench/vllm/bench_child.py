"""`vllm bench serve` kept running in vLLM's own Python, for `latbench.vllm.peer.VllmBench`.

Run as a script by the Python that has vLLM (never imported by latbench, whose environment may
not have vLLM): importing vLLM's benchmark takes 6-9 s on a 2-core machine, longer than a short
benchmark, so one process serves every run of a comparison, and latbench's runs can be
interleaved with vLLM's without paying that each time.

One JSON request a line on stdin, one JSON reply a line on stdout; vLLM's own printing goes to
stderr. Requests:

    {"op": "bench", "argv": [...]}     `vllm bench serve ARGV` (its own add_cli_args and main);
                                       reply {"result": <the dict main returns>}
    {"op": "prompts", "argv": [...], "path": P}   the prompts that ARGV's dataset would send
                                       (vLLM's get_samples, aligned to the server's tokenizer as
                                       main does for the random dataset), written to P as
                                       latbench's JSONL ({"prompt", "max_tokens"} a line);
                                       reply {"prompts": n}
    {"op": "metrics", "result": R, "percentiles": [..]}   vLLM's calculate_metrics over the
                                       per-request arrays of results R (ours or vLLM's);
                                       reply {"metrics": <its BenchmarkMetrics as a dict>}

A failure replies {"error": "..."} and the process goes on.
"""

import asyncio
import contextlib
import json
import sys
import traceback


def _parser():  # type: ignore[no-untyped-def]
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    p = FlexibleArgumentParser()
    serve.add_cli_args(p)
    return p


def _bench(argv: list[str]) -> dict:  # type: ignore[type-arg]
    from vllm.benchmarks import serve

    return {"result": serve.main(_parser().parse_args(argv))}


def _prompts(argv: list[str], path: str) -> dict:  # type: ignore[type-arg]
    from vllm.benchmarks import serve
    from vllm.benchmarks.datasets import get_samples
    from vllm.tokenizers import get_tokenizer

    args = _parser().parse_args(argv)
    tokenizer = get_tokenizer(args.tokenizer or args.model, tokenizer_mode=args.tokenizer_mode)
    requests = get_samples(args, tokenizer)
    if args.dataset_name in ("random", "prefix_repetition"):
        requests = asyncio.run(
            serve._align_prompts_to_server_tokenizer(args.base_url, args.model, requests, None)
        )
    with open(path, "w", encoding="utf-8") as f:
        for r in requests:
            f.write(json.dumps({"prompt": r.prompt, "max_tokens": r.expected_output_len}) + "\n")
    return {"prompts": len(requests)}


def _metrics(result: dict, percentiles: list[float]) -> dict:  # type: ignore[type-arg]
    import dataclasses

    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    outputs = [
        RequestFuncOutput(
            success=not error,
            latency=latency,
            output_tokens=n_out,
            ttft=ttft,
            itl=list(itl),
            prompt_len=n_in,
            start_time=start,
        )
        for error, latency, n_out, ttft, itl, n_in, start in zip(
            result["errors"],
            result["latencies"],
            result["output_lens"],
            result["ttfts"],
            result["itls"],
            result["input_lens"],
            result["start_times"],
            strict=True,
        )
    ]
    metrics, _ = calculate_metrics([], outputs, result["duration"], None, percentiles, {})
    return {"metrics": dataclasses.asdict(metrics)}


def main() -> None:
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            with contextlib.redirect_stdout(sys.stderr):
                if req["op"] == "bench":
                    reply = _bench(req["argv"])
                elif req["op"] == "prompts":
                    reply = _prompts(req["argv"], req["path"])
                elif req["op"] == "metrics":
                    reply = _metrics(req["result"], req["percentiles"])
                else:
                    reply = {"error": f"unknown op {req['op']!r}"}
        except BaseException as e:  # vLLM raises SystemExit on bad flags too
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
