"""What prompt lookup alone would accept on known greedy answers, with no model in the loop.

Greedy decoding's output is fixed, so each step of lookup alone can be replayed on it: propose,
merge into the root, accept the nodes that continue the answer, learn, go on. Prints JSON:
tokens per step and the speed-up those steps would give under a verify-cost curve (default the
quiet-machine CPU curve, ``lookup.CPU_VERIFY_COST``), which needs no timing on a busy box.

    python scripts/replay_lookup.py --answers ../shared/data/self_distilled/smollm2_answers.jsonl.gz --prefix oasst --limit 150
    python scripts/replay_lookup.py --generate grounded    # answer the prompt set first (batched greedy)
    python scripts/replay_lookup.py --generate builtin --limit 6
"""

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from medusa_mlx.lookup import CPU_VERIFY_COST, ROOT, PromptLookup


def replay(prompt: list[int], answer: list[int], cost: np.ndarray) -> tuple[int, int, float]:
    """(tokens after the first, steps, relative cost) of lookup alone on ``answer``."""
    lookup = PromptLookup()
    lookup.begin(prompt + answer[:1])
    pos, steps, spent = 1, 0, 0.0
    while pos < len(answer):
        merged = lookup.merge(ROOT, [answer[pos - 1]], lookup.propose())
        tree, tokens, nodes = merged.tree, merged.tokens, [0]
        while pos + len(nodes) - 1 < len(answer):
            kids = [j for j in range(tree.size) if tree.parents[j] == nodes[-1]
                    and tokens[j] == answer[pos + len(nodes) - 1]]
            if not kids:
                break
            nodes.append(kids[0])
        n = min(len(nodes), len(answer) - pos)  # accepted tokens + the bonus token
        lookup.observe(merged, nodes, 1, answer[pos : pos + n])
        pos, steps, spent = pos + n, steps + 1, spent + cost[tree.size]
    return len(answer) - 1, steps, spent


def answered(name: str, limit: int) -> list[tuple[list[int], list[int]]]:
    """Greedy answers (128 tokens at most) of SmolLM2 to a benchmark prompt set."""
    import medusa_mlx
    from medusa_mlx.bench.prompts import builtin_prompts, read_prompts
    from medusa_mlx.conversation import encode_prompt
    from medusa_mlx.training.answers import generate_batched

    model, tokenizer = medusa_mlx.load(medusa=False)
    texts = builtin_prompts(True) if name == "builtin" else read_prompts(name)
    prompts = [encode_prompt(tokenizer, t, chat_template=True) for t in texts[:limit]]
    answers = generate_batched(model.backbone, prompts, 128, tokenizer.eos_token_ids, 48)
    return list(zip(prompts, answers))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=Path, help="self-distilled answers (.jsonl.gz)")
    parser.add_argument("--prefix", default="", help="only records whose id starts with this")
    parser.add_argument("--generate", help="a benchmark prompt set to answer first: builtin or grounded")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    if args.generate:
        records = answered(args.generate, args.limit)
    else:
        with gzip.open(args.answers, "rt") as f:
            rows = [json.loads(line) for line in f]
        rows = [r for r in rows if r["id"].startswith(args.prefix)][: args.limit]
        records = [(r["prompt_ids"], r["answer_ids"]) for r in rows]
    sizes = sorted(CPU_VERIFY_COST)
    cost = np.interp(np.arange(256), sizes, [CPU_VERIFY_COST[k] for k in sizes])
    per = [replay(p, a, cost) for p, a in records if len(a) > 1]
    tokens, steps, spent = (sum(x[i] for x in per) for i in range(3))
    print(json.dumps({
        "records": len(per), "tokens": tokens,
        "tokens_per_step": round(tokens / steps, 3),
        "speedup_on_cpu_curve": round(tokens / spent, 3),
        "tokens_per_step_per_record": [round(t / s, 2) for t, s, _ in per],
    }))


if __name__ == "__main__":
    main()
