"""Drafting: the heads' guesses laid out as the tree's candidate tokens.

Plain Medusa heads all read the same ``h_t``, so one call gives every head's
top-k and node ``(i1, .., id)`` simply takes head d-1's rank-id token.

Sequential heads see the token before the one they guess, so the right guesses
under node ``(1,)`` (head 0's second choice) differ from those under ``(0,)``.
Drafting therefore walks the tree depth by depth, as Hydra does: head d runs
once per depth-d node that has children, fed that node's own token and its
parent's features, and each child takes its rank from its own parent's logits.
This is exactly the condition the heads were trained in (teacher forcing); one
chain of best guesses for every branch would feed most branches a token that
is, by construction, not the one on their path.
"""

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .context import DrafterCache
from .model import MedusaModel, is_context
from .tree import DynamicTree, Tree, tree_from_parents


def _top_tokens(model: MedusaModel, logits: mx.array, k: int) -> mx.array:
    """(..., V) -> (..., k) token ids, best first (mapped from head-vocabulary slots)."""
    if k == 1:
        top = mx.argmax(logits, axis=-1, keepdims=True)
    else:
        top = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]
        order = mx.argsort(-mx.take_along_axis(logits, top, axis=-1), axis=-1)
        top = mx.take_along_axis(top, order, axis=-1)
    return top if model.head_vocab is None else model.head_vocab[top]


def heads_topk(model: MedusaModel, hidden: mx.array, depth: int, k: int,
               next_token: Optional[int] = None) -> mx.array:
    """The k best tokens of each of the first ``depth`` heads, best first
    (sequential heads: each fed the previous head's best guess).
    ``next_token``: the token emitted at ``hidden``'s position (the tree root)."""
    if next_token is not None:
        next_token = mx.array(next_token)
    return _top_tokens(model, model.head_logits(hidden, depth, next_token), k)


@dataclass(frozen=True)
class BranchPlan:
    """Index buffers for drafting ``tree`` branch by branch, per depth d:

    - ``expand[d]``: which depth-d nodes head d runs for (those with children),
      as positions among the depth-d nodes (depth 0 is the root alone);
    - ``parent_row[d]`` / ``rank[d]``: for every depth-(d+1) node, its parent's
      row in ``expand[d]`` and the rank it takes from that parent's logits.
    """

    expand: tuple
    parent_row: tuple
    rank: tuple
    topk: tuple  # per depth: ranks needed from head d


def branch_plan(tree: Tree) -> BranchPlan:
    by_depth = [[p for p in tree.paths if len(p) == d] for d in range(tree.depth + 1)]
    expand, parent_row, rank, topk = [], [], [], []
    for d in range(tree.depth):
        children = by_depth[d + 1]
        parents = sorted({p[:-1] for p in children}, key=by_depth[d].index)
        row = {p: i for i, p in enumerate(parents)}
        expand.append(mx.array([by_depth[d].index(p) for p in parents]))
        parent_row.append(mx.array([row[p[:-1]] for p in children]))
        rank.append(mx.array([p[-1] for p in children]))
        topk.append(max(p[-1] for p in children) + 1)
    return BranchPlan(tuple(expand), tuple(parent_row), tuple(rank), tuple(topk))


def branch_candidates(model: MedusaModel, hidden: mx.array, root: int, tree: Tree,
                      plan: BranchPlan) -> mx.array:
    """(tree.size,) token of every node, each drafted on its own branch."""
    heads = model.heads
    shared = model.head_projection or model.output_path
    features, tokens = hidden[None], mx.array([root])  # the depth-0 nodes: the root
    out = [tokens]
    for d in range(tree.depth):
        rows = plan.expand[d]
        x = heads.advance(d, features[rows], model.embed(tokens[rows]))
        project = shared if heads.args.shared_lm_head else heads.heads[d].lm_head
        top = _top_tokens(model, project(x), plan.topk[d])
        tokens = top[plan.parent_row[d], plan.rank[d]]
        features = x[plan.parent_row[d]]
        out.append(tokens)
    return mx.concatenate(out)


@dataclass(frozen=True)
class ContextPlan:
    """``BranchPlan`` plus, per depth d >= 1, the tree's expanding depth-d nodes
    (whose drafter entries are appended at that depth) and each one's attention
    over all the entries appended so far (its ancestors' and its own)."""

    branches: BranchPlan
    mask_tail: tuple  # per depth d >= 1: (expanding nodes, entries appended so far) bool


def context_plan(tree: Tree) -> ContextPlan:
    branches = branch_plan(tree)
    by_depth = [[j for j, p in enumerate(tree.paths) if len(p) == d] for d in range(tree.depth + 1)]
    appended, tails = [], []
    for d in range(1, tree.depth):
        appended += [by_depth[d][i] for i in np.array(branches.expand[d]).tolist()]
        tails.append(mx.array(tree.mask[np.ix_(appended[-len(branches.expand[d]):], appended)]))
    return ContextPlan(branches, tuple(tails))


def context_candidates(model: MedusaModel, cache: DrafterCache, root: int, tree: Tree,
                       plan: ContextPlan) -> mx.array:
    """(tree.size,) token of every node from the context drafter, depth by depth:
    the root's estimated feature gives depth 1; each expanding depth-d node then
    appends one drafter entry at position ``root position + d - 1`` (input: its
    parent's output and its own token; attention: the text and its ancestors'
    entries), whose output gives its children. The entries are dropped after."""
    drafter, branches = model.heads, plan.branches
    project = model.head_projection or model.output_path
    x = cache.catch_up(drafter, model.embed, root)[None]  # (1, H): the root's row
    prefix = cache.kv.offset
    tokens, features = mx.array([root]), x
    out = [tokens]
    try:
        for d in range(tree.depth):
            if d > 0:
                rows = branches.expand[d]
                tail = plan.mask_tail[d - 1]
                mask = mx.concatenate([mx.ones((tail.shape[0], prefix), dtype=mx.bool_), tail],
                                      axis=1)
                position = cache.end + d - 1
                x = drafter(features[rows][None], model.embed(tokens[rows])[None], cache.kv,
                            positions=mx.full((tail.shape[0],), position), mask=mask)[0]
            top = _top_tokens(model, project(x), branches.topk[d])
            tokens = top[branches.parent_row[d], branches.rank[d]]
            features = x[branches.parent_row[d]]
            out.append(tokens)
        return mx.concatenate(out)
    finally:
        cache.kv.trim(cache.kv.offset - prefix)  # back to the text's entries


def dynamic_candidates(model: MedusaModel, cache: DrafterCache, root: int,
                       spec: DynamicTree) -> tuple[Tree, mx.array]:
    """EAGLE-2: this step's tree and its tokens, grown by the context drafter.
    Depth d's ``spec.expand`` likeliest nodes (cumulative log-probability of the
    drafter's head-vocabulary distribution along the path) each get their
    ``spec.expand`` best children; the ``spec.nodes`` likeliest nodes overall are
    verified. A child is never likelier than its parent, so the selection is a
    tree. The growth stays on the device (every depth expands exactly ``expand``
    nodes, so each one's ancestors are one row per earlier depth): one host sync
    at the end builds the tree. Measured on SmolLM2 (pilot drafter, OpenBLAS):
    drafting dynamic-8 at depth 5 costs 20.8 ms a step (23.1 ms with a sync per
    depth) against 9.9 ms for tree-8 (depth 3): the drafter forwards per depth,
    not the syncs, are the cost, so fewer depths are what would pay."""
    drafter, project, E = model.heads, model.head_projection or model.output_path, spec.expand
    x = cache.catch_up(drafter, model.embed, root)[None]  # the frontier's outputs: the root's
    prefix = cache.kv.offset
    front_scores, ancestors = mx.zeros((1,)), mx.zeros((1, 0), dtype=mx.int32)
    levels = []  # per depth: (tokens, scores) of the frontier's E children each, and the frontier
    eye = mx.arange(E)
    try:
        for d in range(spec.depth):
            if d > 0:  # the frontier: the E likeliest of the last level's children
                frontier = mx.argpartition(-levels[-1][1], kth=E - 1)[:E]
                parent_row = frontier // E
                ancestors = mx.concatenate([ancestors[parent_row], eye[:, None]], axis=1)
                blocks = [ancestors[:, j:j + 1] == eye[None] for j in range(d)]
                mask = mx.concatenate([mx.ones((E, prefix), dtype=mx.bool_)] + blocks, axis=1)
                x = drafter(x[parent_row][None], model.embed(levels[-1][0][frontier])[None],
                            cache.kv, positions=mx.full((E,), cache.end + d - 1), mask=mask)[0]
                front_scores = levels[-1][1][frontier]
                levels[-1] = levels[-1][:2] + (frontier,)
            logp = nn.log_softmax(project(x).astype(mx.float32), axis=-1)
            top = mx.argpartition(-logp, kth=E - 1, axis=-1)[:, :E]
            scores = (front_scores[:, None] + mx.take_along_axis(logp, top, axis=-1)).reshape(-1)
            top = top if model.head_vocab is None else model.head_vocab[top]
            levels.append((top.reshape(-1), scores, None))
        mx.eval(levels)
    finally:
        cache.kv.trim(cache.kv.offset - prefix)  # back to the text's entries
    # Host side: global node ids, the likeliest spec.nodes, parents before children.
    parents, tokens, scores, depths, ids_of_frontier = [-1], [root], [0.0], [0], [0]
    for d, (level_tokens, level_scores, frontier) in enumerate(levels):
        first = len(tokens)
        for c, (t, sc) in enumerate(zip(level_tokens.tolist(), level_scores.tolist())):
            parents.append(ids_of_frontier[c // E])
            tokens.append(t)
            scores.append(sc)
            depths.append(d + 1)
        if frontier is not None:
            ids_of_frontier = [first + i for i in frontier.tolist()]
    keep = sorted(range(len(tokens)), key=lambda j: (-scores[j], depths[j]))[: spec.nodes]
    keep.sort(key=lambda j: (depths[j], -scores[j]))  # parents first, likelier siblings first
    index = {j: i for i, j in enumerate(keep)}
    tree = tree_from_parents([-1] + [index[parents[j]] for j in keep[1:]], spec.name)
    return tree, mx.array([tokens[j] for j in keep])


def draft_candidates(model: MedusaModel, hidden: mx.array, root: int, tree: Tree,
                     plan: Optional[BranchPlan] = None) -> mx.array:
    """(tree.size,) candidate tokens, root first, in the tree's node order.
    ``plan``: ``branch_plan(tree)``, worth building once per tree for sequential heads."""
    if model.heads.args.sequential:
        return branch_candidates(model, hidden, root, tree, plan or branch_plan(tree))
    topk = heads_topk(model, hidden, tree.depth, tree.topk)
    return mx.concatenate([mx.array([root]), topk.reshape(-1)])[mx.array(tree.gather)]


def proposed_candidates(topk: mx.array, root: int, tree: Tree) -> mx.array:
    """(tree.size,) candidate tokens from a ``proposer``'s rows (row d: its
    guesses for depth d, best first), laid out like the heads' top-k."""
    if topk.shape[0] < tree.depth or topk.shape[1] < tree.topk:
        raise ValueError(
            f"proposer returned {tuple(topk.shape)} tokens; tree '{tree.name}' "
            f"needs at least ({tree.depth}, {tree.topk})"
        )
    topk = topk[: tree.depth, : tree.topk]
    return mx.concatenate([mx.array([root]), topk.reshape(-1)])[mx.array(tree.gather)]


def drafting_plan(model: MedusaModel, tree, proposer=None):
    """What drafting ``tree`` needs precomputed once per generation, if anything."""
    if proposer is not None or model.heads is None or isinstance(tree, DynamicTree):
        return None
    if is_context(model.heads):
        return context_plan(tree)
    return branch_plan(tree) if model.heads.args.sequential else None


def draft_step(model: MedusaModel, tree, plan, root: int, hidden: mx.array, history: list,
               proposer=None, drafter_cache: Optional[DrafterCache] = None) -> tuple:
    """This step's (tree, candidate tokens), from whatever drafts: a proposer,
    a context drafter (static or dynamic tree: pass its ``drafter_cache``) or
    Medusa heads (``hidden``: the root's parent's hidden state)."""
    if proposer is not None:
        return tree, proposed_candidates(proposer(hidden, history), root, tree)
    if isinstance(tree, DynamicTree):
        return dynamic_candidates(model, drafter_cache, root, tree)
    if drafter_cache is not None:
        return tree, context_candidates(model, drafter_cache, root, tree, plan)
    return tree, draft_candidates(model, hidden, root, tree, plan)
