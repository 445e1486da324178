"""Pick the candidate tree from measurement, not from the paper.

Two measurements:

- acceptance: on held-out positions, the rank of the right token in each
  head's logits (sequential heads fed the true earlier tokens, as the right
  branch of a tree drafted branch by branch is). A tree node (i1, .., id) is
  accepted at a position iff head j's rank-i_j token is right for every j < d,
  so the expected tokens per step of a
  tree is ``1 + sum over nodes of P(node accepted)`` (1 = the bonus token).
  These joint frequencies are counted directly, without assuming the heads are
  independent.
- cost: seconds for one forward over N tree tokens with a warm KV cache, plus
  the heads' top-k for depth d, relative to one plain decoding step. On a CPU
  this grows fast with N, so small trees win; on Apple GPUs it is much flatter.

The chosen tree maximises expected tokens per step / relative cost among the
presets and every prefix of a greedily grown tree (best node first).
"""

import heapq
from dataclasses import dataclass, field

import numpy as np

from ..cost import CostModel, measure_cost
from ..tree import PRESETS, expanded_nodes
from .data import IGNORE

def acceptance_masks(rank: np.ndarray, paths) -> dict:
    """rank (K, N) -> {path: bool (N,) accepted}."""
    masks = {(): np.ones(rank.shape[1], dtype=bool)}
    for p in sorted(paths, key=len):
        masks[tuple(p)] = masks[tuple(p[:-1])] & (rank[len(p) - 1] == p[-1])
    return masks


def expected_length(rank: np.ndarray, paths, sequence_ends=None) -> float:
    """Tokens per step (bonus included) of the tree ``paths``.

    Without ``sequence_ends``: the average over all positions, ``1 + sum of
    P(node accepted)``. With them (exclusive end index of each sequence, in
    order), decoding is replayed: a step at position t emits d+1 tokens (d =
    deepest accepted node) and the next step starts at t+d+1. Replaying matters:
    decoding skips easy stretches in long jumps and lands on hard positions more
    often than their share, so the plain average overestimates (stories260K:
    2.73 predicted vs 2.08 measured for chain-3)."""
    paths = [tuple(p) for p in paths if len(p) <= rank.shape[0]]
    masks = acceptance_masks(rank, paths)
    if sequence_ends is None:
        return 1.0 + sum(float(masks[p].mean()) for p in paths)
    depth = np.zeros(rank.shape[1], dtype=np.int64)
    for p in paths:
        depth = np.maximum(depth, masks[p] * len(p))
    tokens = steps = 0
    start = 0
    for end in sequence_ends:
        t = start
        while t < end:
            tokens += depth[t] + 1
            steps += 1
            t += depth[t] + 1
        start = end
    return tokens / max(steps, 1)


def sequence_ends(labels: np.ndarray) -> np.ndarray:
    """Exclusive end of each sequence in concatenated features: head 0 has no
    label exactly at the last two positions of every sequence."""
    missing = labels[:, 0] == IGNORE
    ends = np.nonzero(missing[:-1] & ~missing[1:])[0] + 1
    return np.append(ends, len(labels))


def grow_tree(rank: np.ndarray, max_nodes: int, max_rank: int = 10) -> list:
    """Paths in the order a best-first search adds them (most often accepted
    node first); every prefix of the result is a valid tree."""
    K, N = rank.shape
    all_true = np.ones(N, dtype=bool)
    heap, order = [], []
    masks = {}

    def push(parent):
        base = masks.get(parent, all_true)
        depth = len(parent)
        if depth >= K:
            return
        for i in range(max_rank):
            child = parent + (i,)
            m = base & (rank[depth] == i)
            masks[child] = m
            heapq.heappush(heap, (-m.mean(), len(child), child))

    push(())
    while heap and len(order) < max_nodes:
        _, _, path = heapq.heappop(heap)
        order.append(path)
        push(path)
    return order


@dataclass
class TreeChoice:
    name: str
    paths: list
    expected_length: float
    relative_cost: float
    candidates: list = field(default_factory=list)  # (name, nodes, expected, cost, speedup)
    cost: CostModel = None

    @property
    def speedup(self) -> float:
        return self.expected_length / self.relative_cost

    def summary(self) -> dict:
        return {
            "name": self.name,
            "nodes": len(self.paths),
            "expected_tokens_per_step": round(self.expected_length, 3),
            "relative_step_cost": round(self.relative_cost, 3),
            "estimated_speedup": round(self.speedup, 3),
            "plain_step_ms": round(self.cost.plain * 1e3, 3) if self.cost else None,
            "verify_ms": {str(n): round(s * 1e3, 3) for n, s in self.cost.verify.items()}
            if self.cost else None,
            "heads_ms": {str(d): round(s * 1e3, 3) for d, s in self.cost.heads.items()}
            if self.cost else None,
            "heads_ms_per_expanded_node": round(self.cost.per_expanded_node * 1e3, 3)
            if self.cost else None,
            "candidates": [
                {"name": n, "nodes": s, "expected": round(e, 3), "cost": round(c, 3),
                 "speedup": round(e / c, 3)} for n, s, e, c in self.candidates
            ],
        }


# Timing a step on a shared machine is good to a few percent; acceptance
# replayed over held-out text is steadier. Trees whose estimated speed-up is
# within this fraction of the best are treated as tied, and the tie goes to
# the one that accepts the most: the same speed, fewer steps, and a choice that
# does not flip between a 2-node chain and a 7-node tree on timing noise.
SPEED_TIE = 0.03


def choose_tree(rank: np.ndarray, cost: CostModel, max_nodes: int = 64,
                ends=None, speed_tie: float = SPEED_TIE) -> TreeChoice:
    K = rank.shape[0]
    candidates = []  # (name, paths)
    for name, paths in PRESETS.items():
        clipped = [p for p in paths if len(p) <= K]
        candidates.append((name, clipped))
    grown = grow_tree(rank, max_nodes)
    for n in range(1, len(grown) + 1):
        candidates.append((f"grown-{n}", grown[:n]))
    table, paths_of = [], {}
    for name, paths in candidates:
        expected = expected_length(rank, paths, ends)
        depth = max(len(p) for p in paths)
        relative = cost.relative(len(paths) + 1, depth, expanded_nodes(paths))
        table.append((name, len(paths), expected, relative))
        paths_of[name] = paths
    fastest = max(e / c for _, _, e, c in table)
    tied = [t for t in table if t[2] / t[3] >= fastest * (1 - speed_tie)]
    # Most accepted tokens among the tied; then the faster; then the first listed.
    name, _, expected, relative = max(tied, key=lambda t: (round(t[2], 6), t[2] / t[3]))
    best = (name, paths_of[name], expected, relative)
    shown = [t for t in table if not t[0].startswith("grown-") or t[1] in (1, 2, 3, 4, 6, 8,
                                                                           12, 16, 32, 64)]
    return TreeChoice(best[0], [list(p) for p in best[1]], best[2], best[3], shown, cost)


def choose_tree_for(model, held_out, max_nodes: int = 64) -> TreeChoice:
    """Measure acceptance on ``held_out`` and cost on this machine. Medusa
    heads: held-out ``Features``; a context drafter: held-out
    ``SequenceFeatures`` (it reads whole sequences)."""
    from ..model import is_context
    from .context import drafter_ranks
    from .evaluate import decoding_projection, head_ranks

    # Scored as decoding runs the heads: only head-vocabulary tokens can be
    # proposed, and sequential heads and the drafter draft each branch with its
    # own tokens (draft.py), so the node on the right path sees the true tokens.
    project, vocab = decoding_projection(model)
    if is_context(model.heads):
        rank, ends = drafter_ranks(model.heads, project, model.embed, held_out, vocab,
                                   model.num_heads)
    else:
        rank = head_ranks(model.heads, project, held_out, embed=model.embed, vocab=vocab,
                          teacher_forced=True)
        ends = sequence_ends(held_out.labels)
    return choose_tree(rank, measure_cost(model), max_nodes, ends)


def main(argv=None):
    """Re-measure and store the tree of a trained heads folder (e.g. on a quiet
    machine): python -m medusa_mlx.training.tree_search --model M --heads DIR
    --answers STORE... (the held-out answers' cached features; either kind) or
    --features held_out.npz (Medusa heads trained on --data)."""
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    from pathlib import Path

    from ..cli import ArgumentParser
    from ..errors import UsageError
    from ..heads import load_heads, save_heads
    from ..load import load_backbone
    from ..model import is_context, medusa_model
    from .data import load_features, position_features
    from .prompt_sets import answer_files
    from .sequences import answer_sequence_features

    p = ArgumentParser(description=main.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--heads", required=True)
    p.add_argument("--features", help="Medusa heads: held-out features-*.npz from training")
    p.add_argument("--answers", nargs="+", default=[],
                   help="answer stores whose held-out answers are measured (either kind)")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "medusa-mlx" / "train"))
    p.add_argument("--max-tree-nodes", type=int, default=64)
    args = p.parse_args(argv)
    backbone, _, _ = load_backbone(args.model)
    heads = load_heads(args.heads)
    if args.answers:  # held-out answers: whole sequences for a drafter, positions for heads
        held = answer_sequence_features(backbone, args.model, answer_files(args.answers),
                                        args.max_seq_len, args.cache_dir, held_out=True)
        if held is None:
            raise UsageError("no held-out answers in --answers")
        if not is_context(heads):
            held = position_features(held)
    elif args.features and not is_context(heads):
        held = load_features(args.features)
    else:
        raise UsageError("measure on --answers STORE... (either kind) or, for Medusa heads, "
                         "--features held_out.npz")
    choice = choose_tree_for(medusa_model(backbone, heads), held, args.max_tree_nodes)
    heads.args.extra["tree"] = choice.paths
    heads.args.extra["tree_choice"] = choice.summary()
    save_heads(args.heads, heads)
    print(f"tree {choice.name}: {len(choice.paths)} nodes, expected {choice.expected_length:.2f}"
          f" tokens/step at {choice.relative_cost:.2f}x a plain step -> {choice.speedup:.2f}x")


if __name__ == "__main__":
    main()
