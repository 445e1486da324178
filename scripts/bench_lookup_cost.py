"""Prompt lookup's own cost per decoding step, against the length of the history.

The n-gram index is updated only with each step's new tokens, so a step's
drafting cost (index update + proposal + merge into the tree + budget) should
not grow with the history. This times it on histories of real SmolLM2 answers
(../shared/data/self_distilled) repeated to 1k .. 100k tokens, with no model:
pure Python, so the figure is the drafter's overhead per step. Prints JSON.

    python scripts/bench_lookup_cost.py
"""

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

from medusa_mlx.lookup import PromptLookup
from medusa_mlx.tree import tree_from_parents

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def accepted_path(merged, stream, pos) -> list[int]:
    """Greedy acceptance when the text that follows is known: the nodes whose
    tokens continue ``stream`` at ``pos``."""
    tree, tokens, nodes = merged.tree, merged.tokens, [0]
    while True:
        kids = [j for j in range(tree.size) if tree.parents[j] == nodes[-1]
                and tokens[j] == stream[pos + len(nodes) - 1]]
        if not kids:
            return nodes
        nodes.append(kids[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=Path,
                        default=DATA / "self_distilled" / "smollm2_answers.jsonl.gz")
    parser.add_argument("--lengths", default="1000,10000,100000")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    stream = []
    with gzip.open(args.answers, "rt") as f:
        for line in f:
            r = json.loads(line)
            stream += r["prompt_ids"] + r["answer_ids"]
            if len(stream) > 200_000:
                break
    root = tree_from_parents([-1])
    results = []
    for length in [int(x) for x in args.lengths.split(",")]:
        lookup = PromptLookup()
        tic = time.perf_counter()
        lookup.begin(stream[:length])
        build = time.perf_counter() - tic
        # Then decode the text that follows, accepting what greedy decoding would.
        pos, added, tic = length, 0, time.perf_counter()
        for _ in range(args.steps):
            merged = lookup.merge(root, [stream[pos - 1]], lookup.propose())
            nodes = accepted_path(merged, stream, pos)
            n = len(nodes)  # accepted tokens + the bonus token
            lookup.observe(merged, nodes, 1, stream[pos : pos + n])
            pos, added = pos + n, added + merged.added
        per_step = (time.perf_counter() - tic) / args.steps
        results.append({"history_tokens": length, "index_build_s": round(build, 4),
                        "ms_per_step": round(1e3 * per_step, 4),
                        "mean_nodes_added": round(added / args.steps, 2),
                        "tokens_per_step": round((pos - length) / args.steps, 3)})
    print(json.dumps({"python": platform.python_version(), "machine": platform.machine(),
                      "steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
