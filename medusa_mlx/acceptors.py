"""Acceptance rules: which tree nodes the base model agrees with.

An acceptor picks the first token after the prompt (``first_token``) and, after
each tree verification, the accepted nodes (root first, in root-to-node order)
plus the bonus token drawn from the base model at the last accepted node.

Three acceptance modes, picked with :func:`make_acceptor`:

- ``"greedy"``: token-identical to plain greedy decoding (:class:`GreedyAcceptor`).
- ``"typical"``: Medusa's typical acceptance (Cai et al. 2024, "Medusa: Simple LLM
  Inference Acceleration Framework with Multiple Decoding Heads", sec. 2.3.1). Fast,
  but the output is NOT distributed as plain sampling from the base model.
- ``"lossless"``: speculative sampling over the tree (Leviathan et al. 2023; Chen et
  al. 2023; the multi-draft / tree form of SpecInfer, Miao et al. 2023). Emitted
  tokens are distributed exactly as plain sampling with the same sampler settings.

Both sampling modes work on the *processed* distribution p of the base model:
temperature, top-p, min-p and top-k applied exactly as ``mlx_lm.sample_utils.make_sampler``
applies them. Temperature 0 means greedy decoding in every mode.

Randomness comes from one ``numpy.random.Generator`` per acceptor, so a seed fixes
the tokens. Per step there is one ``mx.eval`` (a handful of values per tree node);
only the row the bonus token is drawn from is copied to numpy as a whole.
"""

import math
from dataclasses import dataclass
from typing import Optional

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


@dataclass(frozen=True)
class SamplerSettings:
    """The settings of ``mlx_lm.sample_utils.make_sampler`` that define a distribution.

    As in mlx-lm, the filters are decided on the *untempered* log-probabilities
    (top-p keeps the smallest set of most likely tokens whose mass reaches top_p,
    ties at the threshold kept; min-p drops tokens below ``min_p * max p``; top-k keeps
    the k most likely), then the kept logits are divided by the temperature.
    """

    temp: float = 0.0
    top_p: float = 0.0  # 0 or >= 1: off
    min_p: float = 0.0  # 0: off
    top_k: int = 0  # 0 or >= vocabulary size: off
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        if self.temp < 0:
            raise ValueError(f"temp must be >= 0, got {self.temp}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0 or self.min_tokens_to_keep < 1:
            raise ValueError("top_k must be >= 0 and min_tokens_to_keep >= 1")

    @property
    def greedy(self) -> bool:
        return self.temp == 0


def sampling_probs(logits: mx.array, settings: SamplerSettings) -> mx.array:
    """Rows of ``logits`` (..., V) -> the distribution ``make_sampler`` samples from.

    Filters are applied in mlx-lm's order (top-p, min-p, top-k). Each one only
    masks tokens and none changes the maximum, so the result is the intersection
    of the three masks computed on the original log-probabilities.
    """
    if settings.greedy:
        # The limit of temp -> 0: a point mass on the argmax.
        return (mx.arange(logits.shape[-1]) == mx.argmax(logits, -1, keepdims=True)).astype(mx.float32)
    logprobs = logits.astype(mx.float32)
    logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
    drop = mx.zeros(logprobs.shape, dtype=mx.bool_)
    vocab = logprobs.shape[-1]
    if 0 < settings.top_p < 1.0:
        ascending = mx.sort(logprobs, axis=-1)
        probs = mx.exp(ascending)
        above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)  # mass strictly above
        total = above[..., :1] + probs[..., :1]
        n_dropped = (above >= settings.top_p * total).sum(axis=-1, keepdims=True)
        threshold = mx.take_along_axis(ascending, n_dropped, axis=-1)
        drop = drop | (logprobs < threshold)
    if settings.min_p != 0.0:
        top = mx.max(logprobs, axis=-1, keepdims=True)
        low = logprobs < top + math.log(settings.min_p)
        keep = settings.min_tokens_to_keep
        if keep > 1:
            best = mx.argpartition(logprobs, kth=-keep, axis=-1)[..., -keep:]
            low = mx.put_along_axis(low, best, mx.array(False), axis=-1)
        drop = drop | low
    if 0 < settings.top_k < vocab:
        rest = mx.argpartition(-logprobs, kth=settings.top_k - 1, axis=-1)[..., settings.top_k :]
        drop = mx.put_along_axis(drop, rest, mx.array(True), axis=-1)
    scaled = mx.where(drop, -mx.inf, logprobs * (1.0 / settings.temp))
    return mx.softmax(scaled, axis=-1)


def _draw(rng: np.random.Generator, row: np.ndarray) -> int:
    """One token from an unnormalised non-negative row (inverse CDF, float64)."""
    cdf = np.cumsum(row, dtype=np.float64)
    # side="right" never lands on a zero-probability token.
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), row.size - 1))


def _children(tree: Tree) -> list[list[int]]:
    """Children of each node in rank order (nodes are sorted by (depth, path))."""
    kids: list[list[int]] = [[] for _ in range(tree.size)]
    for j in range(1, tree.size):
        kids[int(tree.parents[j])].append(j)
    return kids


class SamplingAcceptor:
    """Shared plumbing: settings, the random generator, the first token."""

    name = "sampling"

    def __init__(self, settings: SamplerSettings, seed: Optional[int] = None):
        self.settings = settings
        if seed is None:
            # Follow mx.random.seed(...) the way mlx-lm's samplers do.
            seed = int(mx.random.randint(0, 2**31 - 1, ()).item())
        self.rng = np.random.default_rng(seed)
        self._greedy = GreedyAcceptor()
        self._kids: dict = {}

    def children(self, tree: Tree) -> list[list[int]]:
        if tree.paths not in self._kids:
            if len(self._kids) >= 256:  # trees merged with lookup branches vary per step
                self._kids.clear()
            self._kids[tree.paths] = _children(tree)
        return self._kids[tree.paths]

    def first_token(self, logits: mx.array) -> int:
        if self.settings.greedy:
            return self._greedy.first_token(logits)
        return _draw(self.rng, np.array(sampling_probs(logits, self.settings)))

    def _node_stats(self, tree: Tree, candidates: mx.array, probs: mx.array):
        """p(token of node j | its parent) for every node (root: 1), on device."""
        parents = mx.array(np.maximum(tree.parents, 0))
        child_p = probs[parents, candidates.astype(mx.int32)]
        return mx.where(mx.arange(tree.size) == 0, 1.0, child_p)


class TypicalAcceptor(SamplingAcceptor):
    """Medusa's typical acceptance. NOT distribution-preserving: it is a fast
    heuristic that keeps "plausible enough" head tokens.

    A node's token x is plausible if p(x) > min(posterior_threshold,
    posterior_alpha * exp(-H(p))), with p the processed base distribution at its
    parent and H its entropy. Keep the deepest node whose whole path is plausible
    (ties: highest path likelihood, as the reference ``evaluate_posterior``), then
    sample the bonus token from p at that node. Defaults 0.09 / 0.3 are the
    reference code's (FasterDecoding/Medusa ``medusa_model.py``, whose comment
    recommends alpha = sqrt(threshold)). Differences from the reference: its
    entropy adds 1e-5 inside the log (here it is exact), it uses temperature only
    (here the full processed distribution), and its "fast" mode takes the bonus
    token greedily (here it is sampled).
    """

    name = "typical"

    def __init__(self, settings: SamplerSettings, seed=None, posterior_threshold=0.09, posterior_alpha=0.3):
        super().__init__(settings, seed)
        self.posterior_threshold = posterior_threshold
        self.posterior_alpha = posterior_alpha

    def accept(self, tree: Tree, candidates: mx.array, logits: mx.array) -> Acceptance:
        if self.settings.greedy:
            return self._greedy.accept(tree, candidates, logits)
        probs = sampling_probs(logits, self.settings)
        child_p = self._node_stats(tree, candidates, probs)
        plogp = mx.where(probs > 0, probs * mx.log(mx.maximum(probs, 1e-38)), 0.0)
        entropy = -plogp.sum(axis=-1)
        threshold = mx.minimum(self.posterior_threshold, self.posterior_alpha * mx.exp(-entropy))
        mx.eval(child_p, threshold, probs)
        child_p, threshold = np.array(child_p, np.float64), np.array(threshold, np.float64)
        parents = tree.parents
        ok = np.zeros(tree.size, dtype=bool)
        loglik = np.zeros(tree.size)
        ok[0] = True
        for j in range(1, tree.size):  # parents come before children
            p = parents[j]
            ok[j] = ok[p] and child_p[j] > threshold[p]
            loglik[j] = loglik[p] + math.log(max(child_p[j], 1e-300))
        depth = np.where(ok, tree.depths, -1)
        best_depth = depth.max()
        best = int(np.argmax(np.where(depth == best_depth, loglik, -np.inf)))
        bonus = _draw(self.rng, np.array(probs[best]))
        return Acceptance(tree.path_nodes(best), bonus)


class LosslessAcceptor(SamplingAcceptor):
    """Exact speculative sampling over a tree of deterministic candidates.

    The candidates are point-mass drafts, so the multi-draft rule of SpecInfer
    (Miao et al. 2023) reduces to: at a node, start with the residual r = p (the
    processed base distribution there); try its children in rank order, accepting
    child token x with probability r(x) (= min(1, r(x)/q(x)) with q a point mass on
    x, as in Leviathan et al. 2023 / Chen et al. 2023); on rejection set r(x) = 0
    and renormalise (= max(r - q, 0) normalised), then try the next sibling. On
    acceptance descend into that child with r = p at the child. When every child is
    rejected (or the node is a leaf), the bonus token is drawn from the final r.
    Each sibling trial is one exact rejection-sampling step from r, so the emitted
    tokens are distributed exactly as plain autoregressive sampling from p.
    A token repeated among siblings has r(x) = 0 after its first rejection and is
    skipped (rejected with certainty).
    """

    name = "lossless"

    def acceptance_probability(self, p_x: float, rejected_mass: float) -> float:
        """r(x) for a token not yet rejected: p(x) renormalised after zeroing
        the rejected siblings' mass. (Tests override this to show a biased rule fails.)"""
        left = 1.0 - rejected_mass
        return p_x / left if left > 0 else 1.0

    def residual(self, row: np.ndarray, rejected: set) -> np.ndarray:
        """The distribution the bonus token is drawn from (unnormalised)."""
        row = row.astype(np.float64)
        if rejected:
            row[list(rejected)] = 0.0
        if row.sum() <= 0:  # only after rejecting a ~1-probability token by rounding
            return np.ones_like(row)
        return row

    def accept(self, tree: Tree, candidates: mx.array, logits: mx.array) -> Acceptance:
        if self.settings.greedy:
            return self._greedy.accept(tree, candidates, logits)
        probs = sampling_probs(logits, self.settings)
        child_p = self._node_stats(tree, candidates, probs)
        mx.eval(child_p, candidates, probs)
        child_p = np.array(child_p, np.float64)
        tokens = np.array(candidates).tolist()
        kids = self.children(tree)
        nodes = [0]
        while True:
            node = nodes[-1]
            rejected: set = set()
            mass = 0.0
            for c in kids[node]:
                x = tokens[c]
                if x in rejected:
                    continue  # r(x) = 0 already
                if self.rng.random() < self.acceptance_probability(child_p[c], mass):
                    nodes.append(c)
                    break
                rejected.add(x)
                mass += child_p[c]
            else:
                row = self.residual(np.array(probs[node]), rejected)
                return Acceptance(nodes, _draw(self.rng, row))


ACCEPT_MODES = ("greedy", "typical", "lossless")


def make_acceptor(
    accept: str = "greedy",
    temp: float = 0.0,
    top_p: float = 0.0,
    min_p: float = 0.0,
    top_k: int = 0,
    min_tokens_to_keep: int = 1,
    seed: Optional[int] = None,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
):
    """An acceptor for ``medusa_generate_step(..., acceptor=...)`` / ``stream_generate``.

    Sampler arguments mean what they mean in ``mlx_lm.sample_utils.make_sampler``.
    ``temp=0`` gives greedy decoding whatever ``accept`` says; ``accept="greedy"``
    with ``temp > 0`` is refused (ambiguous). ``seed`` fixes the random stream
    (None: drawn from ``mx.random``, so ``mx.random.seed`` also fixes it).
    """
    if accept not in ACCEPT_MODES:
        raise ValueError(f"unknown accept mode {accept!r}; choose one of: {', '.join(ACCEPT_MODES)}")
    settings = SamplerSettings(temp, top_p, min_p, top_k, min_tokens_to_keep)
    if settings.greedy:
        return GreedyAcceptor()
    if accept == "greedy":
        raise ValueError("accept='greedy' needs temp=0; use 'lossless' or 'typical' to sample")
    if accept == "typical":
        return TypicalAcceptor(settings, seed, posterior_threshold, posterior_alpha)
    return LosslessAcceptor(settings, seed)
