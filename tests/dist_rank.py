"""One rank of a distributed Medusa test run (also runs alone, unsharded).

Started by ``mlx.launch`` or by tests/test_distributed.py with ``MLX_RANK`` and
``MLX_HOSTFILE`` set; writes ``<out>/rank<r>.json`` with this rank's tokens and
figures, or with ``error`` when the run failed with a clear error. The test
reads these files rather than trusting mlx.launch's exit code (which is 0 even
when every rank failed). Fault injection: ``--die-after N`` makes the last rank
exit abruptly after N steps, ``--hang-after N`` makes it stop answering.
Run from the repository root with ``PYTHONPATH=.`` (the tests set it).
"""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import generate_step

from medusa_mlx import distributed
from medusa_mlx.errors import UnsupportedModelError
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.load import load_backbone
from medusa_mlx.backbone import inspect_backbone
from medusa_mlx.context import drafter_args_for, init_drafter
from medusa_mlx.model import attach_heads, medusa_model
from medusa_mlx.acceptors import make_acceptor
from tiny_models import partial_oracle, tiny_model  # tests/ is on sys.path: it holds this script


def build_backbone(spec: str):
    """``tiny``: the random tiny llama, identical on every rank (fixed seed);
    else a model path (e.g. stories260K.bin)."""
    if spec == "tiny":
        return tiny_model("llama", seed=0)
    backbone, _, _ = load_backbone(spec)
    return backbone


def oracle_proposer(reference: list[int], depth: int, topk: int):
    """Head guesses that are always right: the best case for accepted length."""

    def propose(hidden, history):
        rows = []
        for d in range(depth):
            pos = len(history) + d
            true = reference[pos] if pos < len(reference) else 0
            rows.append([true] + [(true + r) % 7 for r in range(1, topk)])
        return mx.array(rows)

    return propose


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompt", default="1,5,9,17,33,2,64", help="comma-separated token ids")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--tree", default="tree-16")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--drafter", action="store_true",
                   help="a random context drafter (the same on every rank) instead of heads")
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--unshared-seeds", action="store_true", help="fault: each rank keeps its own seed")
    p.add_argument("--oracle", action="store_true", help="always-right head guesses (figures)")
    p.add_argument("--partial-oracle", type=int, default=None, metavar="SEED",
                   help="head guesses right at random nodes under SEED (tests.tiny_models.partial_oracle)")
    p.add_argument("--check-every", type=int, default=4)
    p.add_argument("--step-timeout", type=float, default=0.0)
    p.add_argument("--die-after", type=int, default=0, help="fault: last rank exits after N steps")
    p.add_argument("--hang-after", type=int, default=0, help="fault: last rank stops answering after N steps")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    group = distributed.init_group() if distributed.launched() else None
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    result = {"rank": rank, "size": size}
    try:
        result.update(run(args, group, rank, size))
    except (distributed.DistributedError, UnsupportedModelError) as e:
        result["error"] = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    return 1 if "error" in result else 0


def run(args, group, rank: int, size: int) -> dict:
    prompt = [int(t) for t in args.prompt.split(",")]
    backbone = build_backbone(args.model)
    proposer = None
    if args.oracle or args.partial_oracle is not None:
        # Computed before sharding, identically on every rank.
        ref = [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=args.max_tokens)]
        vocab = backbone(mx.array([[1]])).shape[-1]
        proposer = (oracle_proposer(prompt + ref, args.heads, 10) if args.oracle else
                    partial_oracle(prompt + ref, args.partial_oracle, vocab, args.heads))
    if args.drafter:
        parts = inspect_backbone(backbone)
        model = medusa_model(backbone, init_drafter(drafter_args_for(
            parts.hidden_size, parts.vocab_size, backbone.args, max_depth=args.heads), seed=1))
    else:
        model = attach_heads(backbone, num_heads=args.heads, seed=1)
    seed = args.seed
    if group is not None:
        model = distributed.shard_model(model, group)
        seed = (seed or 0) + rank if args.unshared_seeds else distributed.agree_seed(seed, group)
    accept = "lossless" if args.temp > 0 else "greedy"
    acceptor = make_acceptor(accept, temp=args.temp, seed=seed)
    faulty = group is not None and rank == size - 1
    step_timeout = args.step_timeout
    if faulty and args.hang_after:
        # The hung rank's own watchdog must not race rank 0's: both last saw a step
        # at nearly the same moment, and on a busy machine either could fire first.
        # Three times as long makes rank 0's watchdog the one under test.
        step_timeout *= 3
    guarded = (
        distributed.lockstep(group, args.check_every, step_timeout)
        if group is not None
        else nullcontext(None)
    )
    tokens, accepted, times = [], [], []
    with guarded as on_step:

        def hook(step):
            if on_step is not None:
                on_step(step)
            n = len(times) + 1
            if faulty and n == args.die_after:
                os._exit(1)  # abrupt: no cleanup, sockets closed by the kernel
            if faulty and n == args.hang_after:
                time.sleep(600)  # alive but silent, sockets left open

        tic = time.perf_counter()
        for step in medusa_generate_step(
            prompt, model, max_tokens=args.max_tokens, tree=args.tree,
            acceptor=acceptor, proposer=proposer, on_step=hook,
        ):
            now = time.perf_counter()
            times.append(now - tic)
            tic = now
            tokens.extend(step.tokens)
            accepted.append(step.accepted)
    decode_tokens = len(tokens) - 1
    decode_time = sum(times[1:])
    steps = len(times) - 1
    return {
        "tokens": tokens,
        "accepted": accepted[1:],
        "steps": steps,
        "mean_accepted": sum(accepted[1:]) / max(steps, 1),
        "tokens_per_step": decode_tokens / max(steps, 1),
        "decode_tps": decode_tokens / decode_time if decode_time else 0.0,
        "ms_per_step": 1000 * decode_time / max(steps, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
