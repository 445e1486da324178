"""Benchmark: Medusa against plain mlx-lm greedy decoding (and mlx-lm's
draft-model speculative decoding), in one process, interleaved, with warm-up.

    python -m medusa_mlx.bench --oracle --json results.json
    python -m medusa_mlx.bench --model ../shared/data/stories260K.bin --trees chain-2,tree-8

Per prompt the plain greedy baseline runs first (its output is the reference
every other method must reproduce token for token, and what the oracle
proposer replays); the other methods follow in an order that rotates from
prompt to prompt, so slow spells on a shared machine hit them all alike.
Headline tokens/s come from runs without device syncs; the per-step split
(heads / verify / accept + cache update) comes from separate ``profile=True``
runs, whose syncs would otherwise distort the headline.

Also measures the machine's verify-cost curve (:func:`verify_cost_curve`):
what one forward over k new tokens costs relative to one token. A tree of k
nodes only pays when it yields more tokens per step than that ratio.
"""

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import mlx.core as mx
import numpy as np

from ..attention import tree_attention
from ..generate import StepTimings, medusa_generate_step
from ..model import MedusaModel
from ..tree import model_tree

VERIFY_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TREES = "chain-2,tree-8,tree-16,auto"


# ---------------------------------------------------------------- verify cost


def measure_verify_cost(
    model: MedusaModel,
    sizes: Sequence[int] = VERIFY_SIZES,
    context: int = 200,
    repeats: int = 7,
    seed: int = 0,
) -> dict[int, list[float]]:
    """Seconds of each repeat of one verification forward over k new tokens,
    for each k in ``sizes``, with ``context`` tokens already in the KV cache.

    The forward goes through the same path tree verification uses (tree mask
    and per-token RoPE via :func:`tree_attention`, logits for every node), with
    a chain mask: the cost of attention and matmuls does not depend on the
    tree's shape, only on its node count. Sizes are interleaved within each
    repeat so that noise from other processes hits every size alike.
    """
    rng = np.random.default_rng(seed)
    vocab = model.heads.args.vocab_size
    cache = model.make_cache()
    prefix = mx.array(rng.integers(3, vocab, size=(1, context)))
    model.forward(prefix, cache)
    mx.eval([c.state for c in cache])
    inputs = {k: mx.array(rng.integers(3, vocab, size=(1, k))) for k in sizes}
    masks = {k: mx.array(np.tril(np.ones((k, k), dtype=bool))) for k in sizes}
    depths = {k: mx.arange(k) for k in sizes}

    def once(k: int) -> float:
        for c in cache:
            c.offset = context  # forget the previous repeat's tokens
        tic = time.perf_counter()
        with tree_attention(model.rope_owners, cache, masks[k], depths[k]):
            hidden, logits = model.forward(inputs[k], cache)
        mx.eval(hidden, logits, [c.state for c in cache])
        return time.perf_counter() - tic

    for k in sizes:  # warm-up: first calls allocate buffers and compile kernels
        once(k)
    samples: dict[int, list[float]] = {k: [] for k in sizes}
    for r in range(repeats):
        order = list(sizes) if r % 2 == 0 else list(reversed(sizes))
        for k in order:
            samples[k].append(once(k))
    return samples


def verify_cost_curve(
    model: MedusaModel,
    sizes: Sequence[int] = VERIFY_SIZES,
    context: int = 200,
    repeats: int = 7,
) -> dict[int, float]:
    """``{k: cost of verifying k tokens / cost of one token}`` on this machine.

    Used to choose a tree: a tree of k nodes beats plain decoding only if its
    expected tokens per step exceed ``curve[k]`` (plus the heads' cost).
    """
    return verify_cost_record(model, sizes, context, repeats)["relative"]


def verify_cost_record(model, sizes=VERIFY_SIZES, context=200, repeats=7) -> dict:
    """The curve with its absolute timings, as stored in the JSON report.

    ``relative`` uses medians. ``relative_min`` uses the fastest repeat, which
    is the better estimate of what the hardware needs when other processes
    share the CPU (their interference only ever adds time); compare the two to
    judge how noisy the measurement was.
    """
    sizes = sorted(set(sizes) | {1})
    samples = measure_verify_cost(model, sizes, context, repeats)
    median = {k: statistics.median(v) for k, v in samples.items()}
    fastest = {k: min(v) for k, v in samples.items()}
    return {
        "context_tokens": context,
        "repeats": repeats,
        "sizes": sizes,
        "seconds": {k: median[k] for k in sizes},
        "seconds_min": {k: fastest[k] for k in sizes},
        "relative": {k: median[k] / median[1] for k in sizes},
        "relative_min": {k: fastest[k] / fastest[1] for k in sizes},
    }


# ------------------------------------------------------------------- methods


@dataclass
class Run:
    """One generation. ``decode_s`` runs from the first token that was not
    part of the prefill round to the last token, as mlx-lm's generation_tps."""

    tokens: list[int]
    first_round: int  # tokens available when the clock for decode_s started
    decode_s: float
    total_s: float
    steps: int  # verification steps after the first round
    accepted: int  # speculative tokens accepted in those steps
    peak_memory: int
    timings: list[StepTimings] = field(default_factory=list)

    @property
    def decode_tokens(self) -> int:
        return len(self.tokens) - self.first_round

    @property
    def tokens_per_s(self) -> Optional[float]:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else None


@dataclass
class Method:
    name: str
    kind: str  # "baseline", "draft", "medusa" or "oracle"
    tree: Optional[str] = None
    tree_size: Optional[int] = None
    runs: list[Run] = field(default_factory=list)
    profiles: list[Run] = field(default_factory=list)
    equal: list[bool] = field(default_factory=list)


def _stop(token: int, eos: set) -> bool:
    return token in eos


def run_baseline(backbone, prompt: list[int], max_tokens: int, eos: set) -> Run:
    """Plain mlx-lm greedy decoding (``generate_step`` with its default argmax)."""
    from mlx_lm.generate import generate_step

    tokens: list[int] = []
    tic = time.perf_counter()
    first = None
    for token, _ in generate_step(mx.array(prompt), backbone, max_tokens=max_tokens):
        tokens.append(int(token))
        if first is None:
            first = time.perf_counter()
        if _stop(tokens[-1], eos):
            break
    end = time.perf_counter()
    return Run(tokens, 1, end - first, end - tic, len(tokens) - 1, 0, 0)


def run_draft(backbone, draft, prompt, max_tokens, eos, num_draft: int) -> Run:
    """mlx-lm's ``speculative_generate_step`` with a draft model (greedy)."""
    from mlx_lm.generate import speculative_generate_step

    tokens: list[int] = []
    tic = time.perf_counter()
    first = None
    first_round = 0
    steps = accepted = 0
    gen = speculative_generate_step(
        mx.array(prompt), backbone, draft, num_draft_tokens=num_draft, max_tokens=max_tokens
    )
    for token, _, from_draft in gen:
        tokens.append(int(token))
        if first is None:
            if not from_draft:  # the first verification round ends here
                first = time.perf_counter()
                first_round = len(tokens)
        elif from_draft:
            accepted += 1
        else:
            steps += 1
        if _stop(tokens[-1], eos):
            break
    gen.close()
    end = time.perf_counter()
    first = first if first is not None else end
    return Run(tokens, first_round or len(tokens), end - first, end - tic, steps, accepted, 0)


def run_medusa(model, prompt, max_tokens, eos, tree, proposer=None, profile=False) -> Run:
    tokens: list[int] = []
    timings: list[StepTimings] = []
    steps = accepted = 0
    tic = time.perf_counter()
    first = None
    for i, step in enumerate(
        medusa_generate_step(
            prompt, model, max_tokens=max_tokens, tree=tree, proposer=proposer,
            eos_token_ids=eos, profile=profile,
        )
    ):
        tokens.extend(step.tokens)
        if i == 0:
            first = time.perf_counter()
            continue
        steps += 1
        accepted += step.accepted
        timings.append(step.timings)
    end = time.perf_counter()
    return Run(tokens, 1, end - first, end - tic, steps, accepted, 0, timings)


def oracle_proposer(reference: list[int], vocab: int) -> Callable:
    """Heads that always guess right: rank 0 of head d is the greedy token
    d + 1 places after the root; lower ranks are wrong on purpose. Medusa with
    it is the best any heads could do with that tree on this machine."""

    def propose(hidden, history):
        rows = []
        for d in range(8):
            pos = len(history) + d
            true = reference[pos] if pos < len(reference) else 0
            rows.append([true] + [(true + r) % vocab for r in range(1, 10)])
        return mx.array(rows)

    return propose


def _timed(fn, *args, **kwargs) -> Run:
    mx.eval(mx.zeros(1))  # nothing pending from the previous method
    mx.reset_peak_memory()
    run = fn(*args, **kwargs)
    run.peak_memory = mx.get_peak_memory()
    return run


def tree_supported(name: str, model: MedusaModel) -> bool:
    """Probe instead of assuming (an unknown preset name is skipped, not fatal)."""
    try:
        model_tree(name, model)
    except (ValueError, TypeError, KeyError):
        return False
    return True


def make_methods(trees: list[str], model: MedusaModel, draft: bool, num_draft: int,
                 oracle_trees: list[str]) -> list[Method]:
    methods = [Method("mlx-lm greedy", "baseline")]
    if draft:
        methods.append(Method(f"mlx-lm draft x{num_draft}", "draft"))
    for name in trees:
        resolved = model_tree(name, model)
        methods.append(Method("medusa", "medusa", name, resolved.size - 1))
    for name in oracle_trees:
        resolved = model_tree(name, model)
        methods.append(Method("medusa oracle", "oracle", name, resolved.size - 1))
    return methods


def run_one(method: Method, model: MedusaModel, draft, prompt, reference, max_tokens, eos,
            num_draft: int, profile: bool = False) -> Run:
    if method.kind == "baseline":
        return _timed(run_baseline, model.backbone, prompt, max_tokens, eos)
    if method.kind == "draft":
        return _timed(run_draft, model.backbone, draft, prompt, max_tokens, eos, num_draft)
    proposer = None
    if method.kind == "oracle":
        proposer = oracle_proposer(prompt + reference, model.heads.args.vocab_size)
    return _timed(run_medusa, model, prompt, max_tokens, eos, method.tree, proposer, profile)


def run_methods(methods: list[Method], model, draft, prompts: list[list[int]], max_tokens: int,
                eos: set, num_draft: int, profile: bool, log=print) -> None:
    """Warm up every method once, then run each prompt through all of them."""
    warm = prompts[0]
    reference = run_one(methods[0], model, draft, warm, None, 16, eos, num_draft).tokens
    for method in methods[1:]:
        run_one(method, model, draft, warm, reference, 16, eos, num_draft)
    others = methods[1:]
    for i, prompt in enumerate(prompts):
        base = run_one(methods[0], model, draft, prompt, None, max_tokens, eos, num_draft)
        methods[0].runs.append(base)
        methods[0].equal.append(True)
        shift = i % len(others) if others else 0
        for method in others[shift:] + others[:shift]:
            run = run_one(method, model, draft, prompt, base.tokens, max_tokens, eos, num_draft)
            method.runs.append(run)
            method.equal.append(run.tokens == base.tokens)
        if profile:
            for method in others:
                if method.kind in ("medusa", "oracle"):
                    method.profiles.append(
                        run_one(method, model, draft, prompt, base.tokens, max_tokens, eos,
                                num_draft, profile=True)
                    )
        log(f"prompt {i + 1}/{len(prompts)}: " + ", ".join(
            f"{_label(m)} {m.runs[-1].tokens_per_s or 0:.1f}" for m in methods) + " tok/s")


def _label(method: Method) -> str:
    return method.name if method.tree is None else f"{method.name} {method.tree}"


# -------------------------------------------------------------------- report


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(method: Method, baseline: Method) -> dict:
    from .report import spread

    tps = [r.tokens_per_s for r in method.runs if r.tokens_per_s is not None]
    ratios = [
        r.tokens_per_s / b.tokens_per_s
        for r, b in zip(method.runs, baseline.runs)
        if r.tokens_per_s and b.tokens_per_s
    ]
    steps = sum(r.steps for r in method.runs)
    decode_tokens = sum(r.decode_tokens for r in method.runs)
    decode_s = sum(r.decode_s for r in method.runs)
    record = {
        "name": method.name,
        "kind": method.kind,
        "tree": method.tree,
        "tree_size": method.tree_size,
        "tokens_per_s": spread(tps),
        "end_to_end_tokens_per_s": spread(
            [len(r.tokens) / r.total_s for r in method.runs if r.total_s > 0]
        ),
        "speedup_median": statistics.median(ratios) if ratios else None,
        "speedup_per_prompt": ratios,
        "generated_tokens": [len(r.tokens) for r in method.runs],
        "steps": steps,
        "mean_tokens_per_step": decode_tokens / steps if steps else None,
        "mean_accepted_per_step": sum(r.accepted for r in method.runs) / steps if steps else None,
        "ms_per_step_timed": 1e3 * decode_s / steps if steps else None,
        "peak_memory_gb": max((r.peak_memory for r in method.runs), default=0) / 1e9,
        "output_equal": all(method.equal) if method.equal else None,
        "output_equal_per_prompt": method.equal,
        "step_ms": _profile_split(method.profiles),
    }
    return record


def _profile_split(profiles: list[Run]) -> Optional[dict]:
    steps = [t for run in profiles for t in run.timings]
    if not steps:
        return None
    ms = {
        phase: 1e3 * _mean([getattr(t, phase) for t in steps])
        for phase in ("total", "heads", "verify", "accept")
    }
    # Medusa's own cost per step: everything but the backbone's forward.
    ms["overhead_fraction"] = (ms["heads"] + ms["accept"]) / ms["verify"]
    ms["profiled_steps"] = len(steps)
    return ms


def dtype_of(backbone) -> str:
    from mlx.utils import tree_flatten

    dtypes = {str(v.dtype).replace("mlx.core.", "") for _, v in tree_flatten(backbone.parameters())}
    if "uint32" in dtypes:
        return "quantized"
    dense = sorted(dtypes - {"int32"})
    return "/".join(dense) if dense else "unknown"


# ----------------------------------------------------------------------- CLI


def configure_parser():
    import argparse

    from ..cli import ArgumentParser

    parser = ArgumentParser(
        description="Benchmark Medusa decoding against plain mlx-lm greedy decoding "
        "(and mlx-lm draft-model speculative decoding), interleaved, in one process.",
        epilog="examples:\n"
        "  python -m medusa_mlx.bench --oracle --json smollm2.json\n"
        "  python -m medusa_mlx.bench --model ../shared/data/stories260K.bin --oracle\n"
        "  python -m medusa_mlx.bench --model M --draft-model D --trees chain-2,tree-16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="mlx-lm folder, hub id, .gguf, llama2.c .bin (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--medusa", default=None, help="heads folder or hub id (default: the heads shipped for the model, else untrained)")
    parser.add_argument("--draft-model", default=None, help="also run mlx-lm speculative decoding with this draft model (same tokenizer)")
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--trees", default=DEFAULT_TREES, help=f"comma-separated tree presets, or 'auto' where supported (default: {DEFAULT_TREES})")
    parser.add_argument("--oracle", action="store_true", help="also run Medusa with heads that always guess right (the attainable upper bound)")
    parser.add_argument("--oracle-trees", default=None, help="trees for --oracle (default: the deepest chain the heads allow)")
    parser.add_argument("--prompts", default=None, help='JSONL file, one {"prompt": "..."} per line (default: built-in set)')
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile runs (no per-step split)")
    parser.add_argument("--verify-sizes", default=",".join(map(str, VERIFY_SIZES)), help="token counts for the verify-cost curve ('' to skip)")
    parser.add_argument("--verify-repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write every figure and the environment to this file")
    return parser


def benchmark(args, log=print) -> dict:
    """Run everything the parsed ``args`` ask for and return the JSON record."""
    from .report import SCHEMA, builtin_prompts, encode, environment, read_prompts
    from ..load import load, load_backbone

    env = environment()
    if not env["representative"]:
        log("WARNING: reference BLAS in use: timings are not representative (see table)")
    model, tokenizer = load(args.model, args.medusa)
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = read_prompts(args.prompts) if args.prompts else builtin_prompts(chat)
    texts = texts[: args.num_prompts]
    prompts = [encode(tokenizer, t) for t in texts]
    eos = set() if args.ignore_eos else set(tokenizer.eos_token_ids)

    draft = None
    if args.draft_model:
        draft, draft_tokenizer, _ = load_backbone(args.draft_model)
        if draft_tokenizer.encode("Hello, world! 123") != tokenizer.encode("Hello, world! 123"):
            raise ValueError("the draft model's tokenizer differs from the model's")

    trees, skipped = [], []
    for name in [t.strip() for t in args.trees.split(",") if t.strip()]:
        (trees if tree_supported(name, model) else skipped).append(name)
    if skipped:
        log(f"skipping trees this version cannot resolve: {', '.join(skipped)}")
    oracle_trees = []
    if args.oracle:
        oracle_trees = (
            [t.strip() for t in args.oracle_trees.split(",") if t.strip()]
            if args.oracle_trees
            else [f"chain-{min(model.num_heads, 5)}"]
        )
    methods = make_methods(trees, model, draft is not None, args.num_draft_tokens,
                           oracle_trees)

    curve = None
    sizes = [int(s) for s in args.verify_sizes.split(",") if s.strip()]
    if sizes:
        curve = verify_cost_record(model, sizes, repeats=args.verify_repeats)
        log("verify cost: " + ", ".join(f"{k}:{v:.2f}x" for k, v in curve["relative"].items()))

    run_methods(methods, model, draft, prompts, args.max_tokens, eos, args.num_draft_tokens,
                profile=not args.no_profile, log=log)
    baseline = methods[0]
    heads_cfg = model.heads.args
    return {
        "schema": SCHEMA,
        "environment": env,
        "config": {
            "model": args.model or "smollm2 (embedded SmolLM2-135M-Instruct)",
            "heads": args.medusa or _heads_label(args.model),
            "num_heads": model.num_heads,
            "heads_layers": heads_cfg.num_layers,
            "heads_shared_lm_head": heads_cfg.shared_lm_head,
            "dtype": dtype_of(model.backbone),
            "draft_model": args.draft_model,
            "num_draft_tokens": args.num_draft_tokens if draft is not None else None,
            "trees": trees,
            "trees_skipped": skipped,
            "oracle_trees": oracle_trees,
            "prompt_source": args.prompts or ("built-in chat+story" if chat else "built-in stories"),
            "chat_template": chat,
            "num_prompts": len(prompts),
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            "profiled": not args.no_profile,
        },
        "prompts": [{"prompt": t, "prompt_tokens": len(p)} for t, p in zip(texts, prompts)],
        "verify_cost": curve,
        "methods": [summarize(m, baseline) for m in methods],
    }


def _heads_label(model_arg: Optional[str]) -> str:
    from ..load import EMBEDDED_DEFAULT, SHIPPED_HEADS, shipped_heads
    from pathlib import Path

    name = EMBEDDED_DEFAULT if model_arg is None else Path(model_arg).stem.lower()
    if name not in SHIPPED_HEADS and model_arg is not None:
        name = Path(model_arg).name.lower()
    path = shipped_heads(name)
    return f"shipped ({path.name})" if path else "untrained (random)"


def main(argv=None):
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    import json
    import sys

    from .report import render

    args = configure_parser().parse_args(argv)
    result = benchmark(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    render(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    # Greedy Medusa must reproduce plain greedy output exactly; anything else is a bug.
    unequal = [
        m for m in result["methods"]
        if m["kind"] in ("medusa", "oracle") and m["output_equal"] is False
    ]
    return 2 if unequal else 0


if __name__ == "__main__":
    main()
