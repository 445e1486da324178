"""Drafting the tree: every node's token is its own branch's guess."""

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import greedy_sequences, tiny_model

from medusa_mlx.draft import branch_plan, draft_candidates, heads_topk
from medusa_mlx.training.evaluate import head_ranks
from medusa_mlx.heads import HeadsArgs, init_heads
from medusa_mlx.model import attach_heads, medusa_model
from medusa_mlx.training.data import IGNORE, compute_features
from medusa_mlx.tree import tree_from_spec
from medusa_mlx.tree import expanded_nodes

PROMPT = [3, 17, 42, 9, 88]
VOCAB = list(range(2, 128, 3))


def sequential_model(shared: bool, head_vocab: bool, seed: int = 2):
    extra = {"head_vocab": VOCAB} if head_vocab else {}
    args = HeadsArgs(64, 128, num_heads=3, shared_lm_head=shared, sequential=True, extra=extra)
    heads = init_heads(args, seed=seed)
    for head in heads.heads:  # louder token inputs: guesses that clearly depend on the token
        head.token_in.weight = 8 * head.token_in.weight
    return medusa_model(tiny_model("llama", seed=1), heads)


@pytest.mark.parametrize("shared,head_vocab", [(False, False), (True, False), (True, True)])
def test_each_node_is_its_branchs_own_guess(shared, head_vocab):
    """Node (i1, .., id) holds the rank-id token of head d-1 fed the root and the
    tokens on that node's own path: checked against a direct teacher-forced call."""
    model = sequential_model(shared, head_vocab)
    tree = tree_from_spec("tree-32", 3)
    hidden = model.forward(mx.array([PROMPT]), None)[0][0, -1]
    root = 7
    candidates = np.array(draft_candidates(model, hidden, root, tree)).tolist()
    project = model.head_projection or model.output_path
    token_of = {(): root}
    for node, path in enumerate(tree.paths[1:], start=1):
        seen = [root] + [token_of[path[:d]] for d in range(1, len(path))]
        logits = model.heads(hidden, project if shared else None, len(path), embed=model.embed,
                             tokens=mx.array(seen), vocab=model.head_vocab)
        order = np.argsort(-np.array(logits[-1]), kind="stable")
        expected = int(order[path[-1]])
        if head_vocab:
            expected = VOCAB[expected]
        assert candidates[node] == expected, path
        token_of[path] = expected
    # The point of it: under head 0's second guess, head 1 guesses otherwise than
    # a chain of best guesses (which fed it head 0's first guess) would.
    chain = np.array(heads_topk(model, hidden, 3, tree.topk, root))
    off_best = [(n, p) for n, p in enumerate(tree.paths) if any(p[:-1])]
    assert any(candidates[n] != chain[len(p) - 1, p[-1]] for n, p in off_best)


def test_plain_heads_take_each_depths_topk():
    model = attach_heads(tiny_model("qwen2", seed=1), num_heads=3, seed=4)
    tree = tree_from_spec("tree-32", 3)
    hidden = model.forward(mx.array([PROMPT]), None)[0][0, -1]
    top = np.array(heads_topk(model, hidden, tree.depth, tree.topk))
    candidates = np.array(draft_candidates(model, hidden, 5, tree))
    assert candidates[0] == 5
    for node, path in enumerate(tree.paths[1:], start=1):
        assert candidates[node] == top[len(path) - 1, path[-1]]


def test_plan_runs_each_head_once_per_node_with_children():
    tree = tree_from_spec("tree-16", 3)
    plan = branch_plan(tree)
    assert [len(e) for e in plan.expand] == [
        len({p[:-1] for p in tree.paths[1:] if len(p) == d + 1}) for d in range(tree.depth)
    ]
    assert sum(len(e) for e in plan.expand) == expanded_nodes(tree.paths[1:])
    assert [len(e) for e in branch_plan(tree_from_spec("chain-3", 3)).expand] == [1, 1, 1]


def test_teacher_forced_ranks_feed_the_true_tokens():
    """Tree search scores sequential heads as branch drafting runs them: head k
    fed the true earlier tokens, not its predecessors' guesses."""
    backbone = tiny_model("llama", seed=3)
    model = attach_heads(backbone, num_heads=3, sequential=True, seed=5)
    features = compute_features(backbone, greedy_sequences(backbone, 4))
    forced = head_ranks(model.heads, model.output_path, features, embed=model.embed,
                        teacher_forced=True)
    free = head_ranks(model.heads, model.output_path, features, embed=model.embed)
    assert np.array_equal(forced[0], free[0]) and not np.array_equal(forced[1:], free[1:])
    checked = 0
    for t in np.nonzero((features.labels[:, :3] != IGNORE).all(axis=1))[0][:20]:
        seen = [int(features.next_tokens[t])] + features.labels[t, :2].tolist()
        logits = np.array(model.heads(mx.array(features.hidden[t]).astype(mx.float32),
                                      model.output_path, embed=model.embed, tokens=mx.array(seen)))
        for k in range(3):
            label = features.labels[t, k]
            assert forced[k, t] == min((logits[k] > logits[k, label]).sum(), 10)
            checked += 1
    assert checked >= 30
