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
            else:
                rows = mx.array([0])
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
    tree. One host sync per depth (the choice of nodes to expand)."""
    drafter, project = model.heads, model.head_projection or model.output_path
    x = cache.catch_up(drafter, model.embed, root)[None]
    prefix = cache.kv.offset
    parents, tokens, scores, depths = [-1], [root], [0.0], [0]
    frontier, entries, row_of = [0], [], {0: 0}  # expanded nodes, appended entries, rows of x
    ancestry = {0: set()}  # node -> the appended entries on its path (its own included)
    try:
        for d in range(spec.depth):
            if d > 0:
                rows = [parents[j] for j in frontier]
                entries += frontier
                mask = np.ones((len(frontier), prefix + len(entries)), dtype=bool)
                for r, j in enumerate(frontier):
                    ancestry[j] = ancestry[parents[j]] | {len(entries) - len(frontier) + r}
                    mask[r, prefix:] = [e in ancestry[j] for e in range(len(entries))]
                x = drafter(x[mx.array([row_of[p] for p in rows])][None],
                            model.embed(mx.array([tokens[j] for j in frontier]))[None], cache.kv,
                            positions=mx.full((len(frontier),), cache.end + d - 1),
                            mask=mx.array(mask))[0]
            row_of = {j: r for r, j in enumerate(frontier)}
            logp = nn.log_softmax(project(x).astype(mx.float32), axis=-1)
            top = mx.argpartition(-logp, kth=spec.expand - 1, axis=-1)[:, : spec.expand]
            top_logp = mx.take_along_axis(logp, top, axis=-1)
            if model.head_vocab is not None:
                top = model.head_vocab[top]
            top, top_logp = top.tolist(), top_logp.tolist()
            children = []
            for r, j in enumerate(frontier):
                for t, lp in zip(top[r], top_logp[r]):
                    parents.append(j)
                    tokens.append(t)
                    scores.append(scores[j] + lp)
                    depths.append(d + 1)
                    children.append(len(tokens) - 1)
            frontier = sorted(children, key=lambda j: -scores[j])[: spec.expand]
    finally:
        cache.kv.trim(cache.kv.offset - prefix)  # back to the text's entries
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
