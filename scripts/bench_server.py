"""Load benchmark of the server: N streaming requests, C at a time; prints JSON.

    python scripts/bench_server.py --model ../shared/data/stories260K.bin \
        --requests 32 --clients 8 --max-tokens 128 --server-args "--decode-concurrency 1"

Starts ``python -m medusa_mlx.server`` (tests/server_process.py), sends chat
requests with distinct prompts over raw HTTP and records per request the time to
the first text and to the last, then aggregate tokens/s and the server's RSS
before (after a warm-up request) and after. Compare ``--decode-concurrency 1``
(first come, first served) with larger values (interleaved steps).
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from server_process import ServerProcess  # noqa: E402

PROMPTS = ["Once upon a time", "Lily went to the park", "Tom had a red ball", "The sun was hot",
           "A little dog", "Mom said", "The bird sang", "Ben and Sue"]


def one_request(server: ServerProcess, i: int, max_tokens: int) -> dict:
    import http.client

    body = json.dumps({"messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} {i}"}],
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}})
    tic = time.perf_counter()
    first = None
    usage = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - tic
        if chunk.get("usage"):
            usage = chunk
    conn.close()
    return {"status": response.status, "first_text_s": first, "total_s": time.perf_counter() - tic,
            "tokens": usage["usage"]["completion_tokens"], "tokens_per_step": usage["medusa"]["tokens_per_step"]}


def percentile(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--server-args", default="", help="extra server options, e.g. '--decode-concurrency 1'")
    args = parser.parse_args()
    extra = (["--model", args.model] if args.model else []) + shlex.split(args.server_args)
    server = ServerProcess(*extra, "--queue-size", str(max(32, args.requests)))
    try:
        one_request(server, 0, args.max_tokens)  # warm-up
        rss_before = server.rss_mb()
        tic = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda i: one_request(server, i, args.max_tokens), range(args.requests)))
        wall = time.perf_counter() - tic
        rss_after = server.rss_mb()
    finally:
        server.stop()
    from medusa_mlx.blas import blas_info

    tokens = sum(r["tokens"] for r in results)
    print(json.dumps({
        "model": args.model or "smollm2 (embedded)", "server_args": args.server_args,
        "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
        "all_ok": all(r["status"] == 200 for r in results),
        "wall_s": round(wall, 2), "aggregate_tokens_per_s": round(tokens / wall, 1),
        "first_text_s": {"p50": percentile([r["first_text_s"] for r in results], 0.5),
                         "p95": percentile([r["first_text_s"] for r in results], 0.95)},
        "total_s": {"p50": percentile([r["total_s"] for r in results], 0.5),
                    "p95": percentile([r["total_s"] for r in results], 0.95)},
        "mean_tokens_per_step": round(statistics.mean(r["tokens_per_step"] for r in results), 3),
        "rss_mb": {"before": round(rss_before), "after": round(rss_after)},
        "blas": blas_info(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
