"""Candidate trees in Medusa's "medusa choices" form.

A tree is a list of paths; path ``(i1, i2, .., id)`` is the node reached by
taking the i1-th best token of head 0, then the i2-th best of head 1, and so on.
Node 0 is the root: the last token already emitted (not yet in the KV cache).
Every prefix of a path must itself be a path, so a node's parent is in the tree.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

Path = tuple[int, ...]

# Limits on trees from configs and callers. Medusa's largest published tree has 63
# nodes, depth 4 and ranks up to 9; a 64-node tree already costs 4.4 plain steps on
# this CPU. A 50,000-node tree from a config crashed MLX (the mask and the verify
# batch grow with the square of the nodes); a rank of 10^9 asks top-k for 10^9 tokens.
MAX_TREE_NODES = 1024
MAX_TREE_DEPTH = 64
MAX_TREE_RANK = 1024

# Medusa's published sparse tree for Vicuna-7B (FasterDecoding/Medusa,
# medusa/model/medusa_choices.py: ``mc_sim_7b_63``). It was grown greedily by
# expected acceptance, so every leading slice of it is itself a valid tree:
# the smaller presets below are its first 7, 15 and 31 paths.
MC_SIM_7B_63: tuple[Path, ...] = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,),
    (0, 4), (2, 0), (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1),
    (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0),
    (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1),
    (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0),
    (0, 4, 0), (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0),
    (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6),
    (0, 7, 0),
)  # fmt: skip


def _chain(n: int) -> tuple[Path, ...]:
    return tuple((0,) * d for d in range(1, n + 1))


PRESETS: dict[str, tuple[Path, ...]] = {
    **{f"chain-{n}": _chain(n) for n in range(1, 6)},
    "tree-8": MC_SIM_7B_63[:7],
    "tree-16": MC_SIM_7B_63[:15],
    "tree-32": MC_SIM_7B_63[:31],
    "tree-64": MC_SIM_7B_63,
}


@dataclass(frozen=True)
class Tree:
    """Static buffers for one tree (root included, nodes sorted by depth).

    - ``paths[j]``: node j's path (``()`` for the root).
    - ``parents[j]``: index of node j's parent (-1 for the root).
    - ``depths[j]``: RoPE position of node j is ``prefix_len + depths[j]``.
    - ``mask[i, j]``: node i may attend to node j (j is i or an ancestor of i).
    - ``gather[j]``: index of node j's token in ``[root, head0 top-k, head1 top-k, ..]``.
    """

    name: str
    paths: tuple[Path, ...]
    parents: np.ndarray
    depths: np.ndarray
    mask: np.ndarray
    gather: np.ndarray
    topk: int

    @property
    def size(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return int(self.depths.max())

    @property
    def is_chain(self) -> bool:
        """Every node is its predecessor's only child (node j at depth j)."""
        return bool((self.depths == np.arange(self.size)).all())

    def path_nodes(self, node: int) -> list[int]:
        """Node indices from the root down to ``node``."""
        nodes = []
        while node >= 0:
            nodes.append(node)
            node = int(self.parents[node])
        return nodes[::-1]


def check_paths(paths, what: str = "tree") -> list:
    """``paths`` as a list of tuples, if it is a list of paths within the limits above;
    raises ``ValueError`` (a config's ``tree`` is checked with this at load)."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence) \
            or not 0 < len(paths) <= MAX_TREE_NODES:
        raise ValueError(f"{what} must be a list of 1 to {MAX_TREE_NODES} paths")
    clean = []
    for p in paths:
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) \
                or not 0 < len(p) <= MAX_TREE_DEPTH or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                and 0 <= i < MAX_TREE_RANK for i in p):
            raise ValueError(f"invalid {what} path {p!r:.60}: a list of 1 to {MAX_TREE_DEPTH} "
                             f"ranks, each 0 to {MAX_TREE_RANK - 1}")
        clean.append(tuple(int(i) for i in p))
    return clean


def build_tree(paths: Sequence[Sequence[int]], name: str = "custom") -> Tree:
    """Validate ``paths`` and derive every buffer verification needs."""
    clean = sorted(set(check_paths(paths)), key=lambda p: (len(p), p))
    known = set(clean)
    for p in clean:
        if len(p) > 1 and p[:-1] not in known:
            raise ValueError(f"tree path {list(p)} has no parent path {list(p[:-1])}")
    nodes: list[Path] = [()] + clean
    index = {p: j for j, p in enumerate(nodes)}
    topk = max(max(p) for p in clean) + 1
    n = len(nodes)
    parents = np.array([-1] + [index[p[:-1]] for p in clean], dtype=np.int32)
    depths = np.array([len(p) for p in nodes], dtype=np.int32)
    mask = np.zeros((n, n), dtype=bool)
    for j, p in enumerate(nodes):
        for d in range(len(p) + 1):
            mask[j, index[p[:d]]] = True
    gather = np.array([0] + [1 + (len(p) - 1) * topk + p[-1] for p in clean], dtype=np.int32)
    return Tree(name, tuple(nodes), parents, depths, mask, gather, topk)


def tree_from_parents(parents: Sequence[int], name: str = "merged") -> Tree:
    """A Tree from a parent array (``parents[0] == -1``, every parent listed
    before its children), for trees built anew each step (prompt lookup merged
    with the heads' tree). A node's path index is its rank among its siblings in
    node order, so acceptors try siblings in the order they were listed.
    ``gather`` is unused for such trees (their tokens come with them): zeros."""
    n = len(parents)
    parents = np.asarray(parents, dtype=np.int32)
    if n == 0 or parents[0] != -1 or (n > 1 and (parents[1:] >= np.arange(1, n)).any()):
        raise ValueError("parents must start with -1 and list each parent before its children")
    paths: list[Path] = [()]
    depths = np.zeros(n, dtype=np.int32)
    mask = np.zeros((n, n), dtype=bool)
    mask[0, 0] = True
    kids = np.zeros(n, dtype=np.int32)
    for j in range(1, n):
        p = parents[j]
        paths.append(paths[p] + (int(kids[p]),))
        kids[p] += 1
        depths[j] = depths[p] + 1
        mask[j] = mask[p]
        mask[j, j] = True
    topk = int(kids.max()) if n > 1 else 1
    return Tree(name, tuple(paths), parents, depths, mask, np.zeros(n, np.int32), topk)


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2's dynamic tree, grown anew each step by a context drafter
    (``draft.dynamic_candidates``): at each depth the ``expand`` likeliest nodes
    (by cumulative draft probability) get ``expand`` children each, and the
    ``nodes`` likeliest nodes overall (root included) are verified. Spec:
    ``"dynamic-N"`` (N nodes, depth up to the drafter's ``max_depth``)."""

    nodes: int
    depth: int
    expand: int = 4

    @property
    def name(self) -> str:
        return f"dynamic-{self.nodes}"

    @property
    def size(self) -> int:
        return self.nodes

    @property
    def is_chain(self) -> bool:
        return False


def dynamic_tree(spec: str, max_depth: int) -> Optional[DynamicTree]:
    """``"dynamic-N"`` -> a DynamicTree of N nodes (2 <= N <= MAX_TREE_NODES); other specs: None."""
    if not (isinstance(spec, str) and spec.startswith("dynamic-")):
        return None
    count = spec[len("dynamic-"):]
    if not count.isdigit() or not 2 <= int(count) <= MAX_TREE_NODES:
        raise ValueError(f"dynamic tree {spec!r}: give its node count, 2 to {MAX_TREE_NODES} "
                         "(e.g. dynamic-8)")
    return DynamicTree(int(count), max(1, min(max_depth, MAX_TREE_DEPTH)))


TreeSpec = Union[str, Sequence[Sequence[int]], Tree, DynamicTree]


def tree_from_spec(tree: TreeSpec, num_heads: int) -> Tree:
    """A preset name, a list of paths or a built Tree -> Tree usable with
    ``num_heads`` heads (paths deeper than the heads can reach are dropped)."""
    dynamic = tree if isinstance(tree, DynamicTree) else dynamic_tree(tree, num_heads)
    if dynamic is not None:
        return dynamic
    if isinstance(tree, Tree):
        built = tree
    elif isinstance(tree, str):
        if tree == "auto":
            raise ValueError(
                "tree='auto' is read from the heads' config: resolve it with "
                "saved_tree(model) (medusa_generate_step does this for you)"
            )
        if tree not in PRESETS:
            names = ", ".join(PRESETS)
            raise ValueError(f"unknown tree preset {tree!r}; choose one of: {names}")
        built = build_tree(PRESETS[tree], name=tree)
    else:
        built = build_tree(tree)
    if built.depth <= num_heads:
        return built
    kept = [p for p in built.paths[1:] if len(p) <= num_heads]
    return build_tree(kept, name=f"{built.name}[depth<={num_heads}]")


# Small trees win where verifying many tokens is expensive (CPUs); heads trained
# by medusa_mlx.train store the tree measured for them instead.
AUTO_FALLBACK = "tree-8"


def saved_tree(model) -> Union[str, list]:
    """The tree stored in the heads' config.json (key ``"tree"``), else ``AUTO_FALLBACK``."""
    heads = getattr(model, "heads", None)
    extra = getattr(getattr(heads, "args", None), "extra", None) or {}
    paths = extra.get("tree")
    if isinstance(paths, str):  # a preset name or "dynamic-N"
        return paths
    return [tuple(p) for p in paths] if paths else AUTO_FALLBACK


def tree_for_model(tree: TreeSpec, model) -> Tree:
    """Like :func:`tree_from_spec`, for a MedusaModel: also resolves ``"auto"``.
    A model without heads verifies the root alone (plus any lookup branches)."""
    if getattr(model, "heads", True) is None:
        return tree_from_parents([-1], "none")
    if isinstance(tree, str) and tree == "auto":
        chosen = saved_tree(model)
        built = tree_from_spec(chosen, model.num_heads)
        built = built if isinstance(chosen, str) else build_tree(built.paths[1:], name="auto")
    else:
        built = tree_from_spec(tree, model.num_heads)
    if isinstance(built, DynamicTree) and getattr(model.heads, "kind", None) != "context":
        raise ValueError(f"tree '{built.name}' is grown each step by a context drafter; "
                         "these heads draft static trees only")
    return built


def expanded_nodes(paths) -> int:
    """Nodes with children (root included): how often sequential heads run when
    drafting the tree branch by branch."""
    return len({tuple(p[:-1]) for p in paths})
