"""Acceptance rules: which tree nodes the base model agrees with.

An acceptor picks the first token after the prompt (``first_token``) and, after
each tree verification, the accepted nodes (root first, in root-to-node order)
plus the bonus token drawn from the base model at the last accepted node.
"""

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .tree import Tree


@dataclass
class Acceptance:
    nodes: list[int]  # accepted tree nodes, root first
    bonus: int  # next token, from the base model at nodes[-1]

    @property
    def accepted(self) -> int:
        """Number of head-proposed tokens accepted (the root is not one)."""
        return len(self.nodes) - 1


def greedy_path(tree: Tree, candidates: np.ndarray, base_choice: np.ndarray) -> Acceptance:
    """Longest path whose every token equals the base model's choice at its parent."""
    ok = np.zeros(tree.size, dtype=bool)
    ok[0] = True
    parents = tree.parents
    # Nodes are sorted by depth, so a parent is always decided before its children.
    for j in range(1, tree.size):
        p = parents[j]
        ok[j] = ok[p] and candidates[j] == base_choice[p]
    best = int(np.argmax(np.where(ok, tree.depths, -1)))  # deepest; first on ties
    return Acceptance(tree.path_nodes(best), int(base_choice[best]))


class GreedyAcceptor:
    """Token-identical to plain greedy decoding: a node is kept only if greedy
    decoding would have produced exactly its token at that point."""

    name = "greedy"

    def first_token(self, logits: mx.array) -> int:
        return mx.argmax(logits, axis=-1).item()

    def accept(self, tree: Tree, candidates: mx.array, logits: mx.array) -> Acceptance:
        choice = mx.argmax(logits, axis=-1)
        mx.eval(choice, candidates)
        return greedy_path(tree, np.array(candidates), np.array(choice))
