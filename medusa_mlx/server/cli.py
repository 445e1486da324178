"""``medusa-server`` / ``python -m medusa_mlx.server``: parse options, load, serve.

Option names follow ``mlx_lm.server`` where the same option exists (``--model``,
``--host``, ``--port``, ``--temp``, ``--top-p``, ``--top-k``, ``--min-p``,
``--max-tokens``, ``--decode-concurrency``, ``--prompt-cache-size``,
``--allowed-origins``); the Medusa ones follow ``chat.py`` (``--medusa``, ``--tree``).
"""

import argparse
import logging
import os
import sys
import threading

from ..cli import ArgumentParser, add_model_arguments, run_cli
from ..errors import UsageError


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="medusa-server",
        description="An OpenAI-compatible HTTP server (as mlx_lm.server) that decodes with Medusa "
        "speculative decoding. Greedy answers (temperature 0) are exactly plain decoding's.",
        epilog="examples:\n"
        "  medusa-server                                  # embedded SmolLM2-135M-Instruct + shipped heads\n"
        "  medusa-server --model ../shared/data/stories260K.bin --port 8081\n"
        "  medusa-server --model mlx-community/Qwen2.5-0.5B-Instruct-bf16 --medusa ./my-heads --api-key S3CRET",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port, printed at start)")
    parser.add_argument("--api-key", default=os.environ.get("MEDUSA_API_KEY") or None, help="require 'Authorization: Bearer KEY' on /v1 endpoints (default: $MEDUSA_API_KEY, which, unlike an argument, other users' ps does not show)")
    parser.add_argument("--allowed-origins", default="", help="comma-separated origins for browser (CORS) clients, or '*' (default: none)")
    sampling = parser.add_argument_group("defaults for requests that do not say")
    sampling.add_argument("--temp", type=float, default=0.0, help="temperature (default 0: greedy)")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--top-k", type=int, default=0)
    sampling.add_argument("--min-p", type=float, default=0.0)
    sampling.add_argument("--accept", default="lossless", choices=["lossless", "typical"], help="Medusa acceptance when sampling (default lossless: same distribution as plain sampling)")
    sampling.add_argument("--max-tokens", type=int, default=512, help="answer length when a request gives no max_tokens (default 512)")
    bounds = parser.add_argument_group("bounds (beyond them: 400, 413 or 503 with a JSON error)")
    bounds.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for (default 4096)")
    bounds.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    bounds.add_argument("--decode-concurrency", type=int, default=4, help="requests decoded at once, interleaved step by step, each with its own KV cache (default 4)")
    bounds.add_argument("--queue-size", type=int, default=32, help="requests that may wait for a turn; more get 503 (default 32)")
    bounds.add_argument("--prompt-cache-size", type=int, default=10, help="idle conversation KV caches kept for reuse (default 10)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv=None) -> None:
    run_cli(_main, argv)


def _main(argv) -> int:
    from ..load import load
    from .http import ServerConfig, make_server
    from .requests import Limits, SamplingDefaults
    from .worker import Worker

    args = configure_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("max_tokens", "max_tokens_limit", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_tokens > args.max_tokens_limit:
        raise UsageError("--max-tokens must not exceed --max-tokens-limit")
    if args.api_key is not None and not args.api_key:
        raise UsageError("--api-key must not be empty")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    defaults = SamplingDefaults(args.temp, args.top_p, args.top_k, args.min_p, args.accept)
    defaults_check(defaults)
    model, tokenizer = load(args.model, False if args.no_heads else args.medusa)
    worker = Worker(model, tokenizer, tree=args.tree, concurrency=args.decode_concurrency,
                    queue_size=args.queue_size, cache_size=args.prompt_cache_size,
                    lookup=args.lookup or args.no_heads)
    config = ServerConfig(
        model_id=args.model or "smollm2-135m-instruct",
        limits=Limits(args.max_tokens, args.max_tokens_limit, model.context_length,
                      getattr(getattr(model.backbone, "args", None), "vocab_size", None)),
        defaults=defaults,
        max_request_bytes=args.max_request_bytes,
        api_key=args.api_key,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
    )
    httpd = make_server(args.host, args.port, worker, config)
    host, port = httpd.server_address[:2]
    # HTTP on a background thread; the model stays on this one (see worker.py).
    threading.Thread(target=httpd.serve_forever, name="medusa-http", daemon=True).start()
    # One parseable line, flushed: scripts and tests wait for it (the port may have been 0).
    print(f"medusa-server: listening on http://{host}:{port} (model {config.model_id}, "
          f"tree {worker.tree.name}, {worker.tree.size} nodes)", flush=True)
    try:
        worker.run()
    except KeyboardInterrupt:
        print("medusa-server: stopped", file=sys.stderr)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return 0


def defaults_check(defaults) -> None:
    """Bad sampling defaults are a start-up error, not a 500 on every request."""
    from ..acceptors import make_acceptor

    make_acceptor(defaults.accept if defaults.temperature > 0 else "greedy", temp=defaults.temperature,
                  top_p=defaults.top_p, min_p=defaults.min_p, top_k=defaults.top_k)
