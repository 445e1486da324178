"""How good are trained heads? Held-out head accuracy and real decoding acceptance.

    python -m medusa_mlx.evaluate --model smollm2 --heads medusa_mlx/shipped_heads/smollm2-135m-instruct \\
        --data data/chat_prompts.jsonl --trees chain-1 tree-8 auto

- ``head_accuracy``: per-head top-1 / top-5 and per-rank accuracy (P(head k's
  rank-i token is the target)) on cached held-out features.
- ``mean_accepted_length``: tokens emitted per Medusa decoding step (accepted
  head tokens + the bonus token; the prefill step excluded) when greedily
  decoding held-out prompts with a given tree.
"""

import json
import time
from typing import Callable, Optional

import mlx.core as mx
import numpy as np

from ..cli import ArgumentParser
from ..heads import MedusaHeads
from .data import IGNORE, Features, relabel, teacher_tokens

RANKS = 10
# The held-out real-prompt sources the per-source figure averages over.
REAL_EVAL_SOURCES = ("oasst", "self_instruct", "gsm8k_test", "humaneval")


def head_ranks(heads: MedusaHeads, lm_head: Callable, data: Features, ranks: int = RANKS,
               batch_size: int = 512, embed: Optional[Callable] = None,
               vocab: Optional[np.ndarray] = None, teacher_forced: bool = False) -> np.ndarray:
    """(K, N) rank of the label among each head's logits, ``ranks`` if not in the
    top ``ranks`` (or no label). ``embed``: the backbone's token embedding, for
    sequential heads. They see ``data.next_tokens`` and then their own guesses,
    as a chain of best guesses would (the accuracy reported after training);
    with ``teacher_forced`` they see the true tokens instead, which is what a
    tree drafted branch by branch gives the node on the right path (draft.py):
    the ranks tree search needs.
    ``vocab``: the heads' token ids when ``lm_head`` scores only those (a head
    vocabulary); a label outside it can never be proposed, so it ranks ``ranks``."""
    forced = None
    if teacher_forced and heads.args.sequential:
        if data.next_tokens is None:
            raise ValueError("sequential heads need features with next_tokens")
        forced = teacher_tokens(data.next_tokens, data.labels[:, : heads.num_heads - 1])
    if vocab is not None:
        # A label outside the vocabulary ranks ``ranks``, like a position without one.
        labels = relabel(data.labels, vocab)
        return _label_ranks(heads, lm_head, Features(data.hidden, labels, data.next_tokens),
                            ranks, batch_size, embed, mx.array(vocab), forced)
    return _label_ranks(heads, lm_head, data, ranks, batch_size, embed, None, forced)


def _label_ranks(heads, lm_head, data, ranks, batch_size, embed, vocab, forced) -> np.ndarray:
    K = heads.num_heads
    sequential = heads.args.sequential
    if sequential and (embed is None or data.next_tokens is None):
        raise ValueError("sequential heads need embed and features with next_tokens")
    out = np.full((K, len(data)), ranks, dtype=np.int32)
    for b in range(0, len(data), batch_size):
        x = mx.array(data.hidden[b : b + batch_size]).astype(mx.float32)
        if sequential:
            seen = data.next_tokens[:, None] if forced is None else forced
            tokens = mx.array(seen[b : b + batch_size])
            logits = heads(x, lm_head, embed=embed, tokens=tokens, vocab=vocab)  # (K, B, V)
        else:
            logits = heads(x, lm_head)
        labels = mx.array(np.maximum(data.labels[b : b + batch_size, :K].T, 0))[..., None]
        # The label's rank is how many tokens score higher: no sort of the vocabulary.
        label_logit = mx.take_along_axis(logits, labels, axis=-1)
        rank = (logits > label_logit).sum(axis=-1)
        out[:, b : b + batch_size] = np.minimum(np.array(rank), ranks)
    valid = data.labels[:, :K].T != IGNORE
    out[~valid] = ranks
    return out


def head_accuracy(heads: MedusaHeads, lm_head: Callable, data: Features,
                  ranks: int = RANKS, embed: Optional[Callable] = None,
                  vocab: Optional[np.ndarray] = None, teacher_forced: bool = False) -> dict:
    """Per head: top-1, top-5 and per-rank accuracy on positions with a label
    (with ``vocab`` and ``teacher_forced``, as in ``head_ranks``)."""
    rank = head_ranks(heads, lm_head, data, ranks, embed=embed, vocab=vocab,
                      teacher_forced=teacher_forced)
    valid = (data.labels[:, : heads.num_heads].T != IGNORE)
    n = np.maximum(valid.sum(axis=1), 1)
    per_rank = [[float(((rank[k] == i) & valid[k]).sum() / n[k]) for i in range(ranks)]
                for k in range(heads.num_heads)]
    return {
        "top1": [round(float(((rank[k] < 1) & valid[k]).sum() / n[k]), 4)
                 for k in range(len(n))],
        "top5": [round(float(((rank[k] < 5) & valid[k]).sum() / n[k]), 4)
                 for k in range(len(n))],
        "per_rank": [[round(p, 4) for p in row] for row in per_rank],
        "positions": int(valid[0].sum()),
    }


def decoding_projection(model) -> tuple:
    """(projection, head vocabulary ids or None): how decoding scores a wrapped
    model's heads, for ``head_ranks`` / ``head_accuracy``."""
    vocab = None if model.head_vocab is None else np.array(model.head_vocab)
    return model.head_projection or model.output_path, vocab


def features_accuracy(model, data: Features) -> dict:
    """Head accuracy of a wrapped model's heads as decoding scores them (head
    vocabulary included): fed their own guesses and, for sequential heads, the
    true earlier tokens (what branch drafting gives the right path)."""
    project, vocab = decoding_projection(model)
    ways = {"own guesses": False}
    if model.heads.args.sequential:
        ways["true tokens"] = True
    result = {}
    for name, forced in ways.items():
        acc = head_accuracy(model.heads, project, data, embed=model.embed, vocab=vocab,
                            teacher_forced=forced)
        result[name] = {"top1": acc["top1"], "top5": acc["top5"], "positions": acc["positions"]}
    return result


def mean_accepted_length(model, prompts: list, tree, max_tokens: int, eos_ids=()) -> dict:
    """Greedy Medusa decoding of every prompt; tokens per decoding step, bonus included."""
    from ..generate import medusa_generate_step

    tokens = steps = 0
    tic = time.perf_counter()
    for prompt in prompts:
        for step in medusa_generate_step(prompt, model, max_tokens=max_tokens, tree=tree,
                                         eos_token_ids=eos_ids):
            if not step.is_prefill:
                tokens += len(step.tokens)
                steps += 1
    seconds = time.perf_counter() - tic
    return {"mean_accepted_length": tokens / max(steps, 1), "tokens": tokens, "steps": steps,
            "seconds": round(seconds, 2)}


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(description="Mean accepted length of trained Medusa heads.")
    p.add_argument("--model", required=True)
    p.add_argument("--heads", required=True)
    p.add_argument("--data", nargs="+", default=None,
                   help="the training data files: their held-out split gives the prompts")
    p.add_argument("--prompt-sets", default=None, metavar="DIR",
                   help="a folder of real prompt sets (../shared/data/prompts): decode the fixed "
                        "held-out split of every source and report tokens/step per source")
    p.add_argument("--sources", nargs="*", default=list(REAL_EVAL_SOURCES),
                   help="with --prompt-sets: the sources to decode")
    p.add_argument("--features", default=None,
                   help="held-out features-*.npz from training: also report per-head accuracy "
                        "(sequential heads both fed their own guesses and the true tokens)")
    p.add_argument("--held-out", type=float, default=0.1)
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--trees", nargs="*", default=["chain-1", "chain-3", "tree-8", "tree-16",
                                                  "tree-32", "auto"],
                   help="trees to decode the held-out prompts with (none: accuracy only)")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    return p


def main(argv=None):
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    from ..heads import load_heads
    from ..load import load_backbone, resolve_heads_path
    from ..model import medusa_model
    from .data import load_features

    parser = configure_parser()
    args = parser.parse_args(argv)
    if args.trees and not (args.data or args.prompt_sets):
        parser.error("decoding held-out prompts needs --data or --prompt-sets "
                     "(or pass --trees with no trees)")
    backbone, tokenizer, _ = load_backbone(args.model)
    model = medusa_model(backbone, load_heads(resolve_heads_path(args.heads)))
    results = {"heads": args.heads, "max_tokens": args.max_tokens,
               "held_out_accuracy": model.heads.args.extra.get("held_out_accuracy")}
    if args.features:
        results["features"] = args.features
        results["accuracy"] = features_accuracy(model, load_features(args.features))
        for name, acc in results["accuracy"].items():
            print(f"held-out accuracy ({name}): top-1 {acc['top1']}  top-5 {acc['top5']}")
    if args.trees and args.prompt_sets:
        results["sources"] = decode_sources(model, tokenizer, args)
    elif args.trees:
        prompts = held_out_prompt_ids(tokenizer, args)
        results["prompts"] = len(prompts)
        results["trees"] = decode_trees(model, tokenizer, prompts, args.trees, args.max_tokens)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


def held_out_prompt_ids(tokenizer, args) -> list:
    """The prompts of the held-out split of ``--data``, as token ids."""
    from .data import prompt_ids, read_records, split_records

    records = read_records(args.data)[: args.max_records]
    _, held = split_records(records, args.held_out, args.seed)
    return [prompt_ids(tokenizer, r, args.prompt_tokens) for r in held[: args.num_prompts]]


def decode_trees(model, tokenizer, prompts: list, trees, max_tokens: int, label: str = "") -> dict:
    out = {}
    eos = list(tokenizer.eos_token_ids)
    for tree in trees:
        r = mean_accepted_length(model, prompts, tree, max_tokens, eos)
        out[tree] = r
        print(f"{label}{tree:>10}: {r['mean_accepted_length']:.2f} tokens/step "
              f"({r['tokens']} tokens, {r['steps']} steps, {r['seconds']:.1f} s)", flush=True)
    return out


def decode_sources(model, tokenizer, args) -> dict:
    """Tokens/step per tree for each real prompt source's fixed held-out split
    (``distill.is_held_out``: never trained on), and their average over sources
    (each source weighs the same, whatever its number of prompts)."""
    from pathlib import Path

    from .prompt_sets import held_out_prompts, read_prompt_file

    prompts = []
    for source in args.sources:
        path = Path(args.prompt_sets) / f"{source}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no prompt set {path}")
        prompts += read_prompt_file(path)
    groups = held_out_prompts(prompts, args.num_prompts)
    out = {"per_source": {}, "prompts": {s: len(g) for s, g in groups.items()}}
    for source, group in groups.items():
        ids = [list(tokenizer.apply_chat_template(p.messages, add_generation_prompt=True))
               for p in group]
        out["per_source"][source] = decode_trees(model, tokenizer, ids, args.trees,
                                                 args.max_tokens, f"{source:>14} ")
    out["average"] = {tree: round(float(np.mean([r[tree]["mean_accepted_length"]
                                                 for r in out["per_source"].values()])), 3)
                      for tree in args.trees}
    print("average over sources: " + ", ".join(f"{t} {v:.2f}" for t, v in out["average"].items()))
    return out


if __name__ == "__main__":
    main()
