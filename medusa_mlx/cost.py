"""What a Medusa step costs on this machine, measured: the verification forward
over k tree tokens, a plain decoding step, and the heads' drafting.

One timing function (:func:`time_verify`) serves both users: the benchmark
reports its median and fastest repeat per size (``verify_cost_record``), tree
search (:func:`measure_cost`) takes the fastest repeat, the least noisy
estimate on a shared machine since other work only ever adds time.
"""

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx
import numpy as np

from .attention import tree_attention
from .draft import draft_step, drafting_plan
from .model import MedusaModel, is_context
from .tree import PRESETS, build_tree, expanded_nodes

# Token counts of the benchmark's verify-cost curve and of tree search's cost model.
VERIFY_SIZES = (1, 2, 4, 8, 16, 32, 64)
COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 65)


def time_verify(
    model: MedusaModel,
    sizes: Sequence[int] = VERIFY_SIZES,
    context: int = 200,
    repeats: int = 7,
    seed: int = 0,
) -> dict[int, list[float]]:
    """Seconds of each repeat of one verification forward over k new tokens,
    for each k in ``sizes``, with ``context`` tokens already in the KV cache.

    The forward goes through the same path tree verification uses (tree mask
    and per-token RoPE via :func:`tree_attention`, logits for every node), with
    a chain mask: the cost of attention and matmuls does not depend on the
    tree's shape, only on its node count. Sizes are interleaved within each
    repeat so that noise from other processes hits every size alike.
    """
    rng = np.random.default_rng(seed)
    vocab = model.heads.args.vocab_size
    cache = model.make_cache()
    prefix = mx.array(rng.integers(3, vocab, size=(1, context)))
    model.forward(prefix, cache)
    mx.eval([c.state for c in cache])
    inputs = {k: mx.array(rng.integers(3, vocab, size=(1, k))) for k in sizes}
    masks = {k: mx.array(np.tril(np.ones((k, k), dtype=bool))) for k in sizes}
    depths = {k: mx.arange(k) for k in sizes}

    def once(k: int) -> float:
        for c in cache:
            c.offset = context  # forget the previous repeat's tokens
        tic = time.perf_counter()
        with tree_attention(model.position_slots, cache, masks[k], depths[k]):
            hidden, logits = model.forward(inputs[k], cache)
        mx.eval(hidden, logits, [c.state for c in cache])
        return time.perf_counter() - tic

    for k in sizes:  # warm-up: first calls allocate buffers and compile kernels
        once(k)
    samples: dict[int, list[float]] = {k: [] for k in sizes}
    for r in range(repeats):
        order = list(sizes) if r % 2 == 0 else list(reversed(sizes))
        for k in order:
            samples[k].append(once(k))
    return samples


def verify_cost_curve(
    model: MedusaModel,
    sizes: Sequence[int] = VERIFY_SIZES,
    context: int = 200,
    repeats: int = 7,
) -> dict[int, float]:
    """``{k: cost of verifying k tokens / cost of one token}`` on this machine.

    Used to choose a tree: a tree of k nodes beats plain decoding only if its
    expected tokens per step exceed ``curve[k]`` (plus the heads' cost).
    """
    return verify_cost_record(model, sizes, context, repeats)["relative"]


def verify_cost_record(model, sizes=VERIFY_SIZES, context=200, repeats=7) -> dict:
    """The curve with its absolute timings, as stored in the JSON report.

    ``relative`` uses medians. ``relative_min`` uses the fastest repeat, which
    is the better estimate of what the hardware needs when other processes
    share the CPU (their interference only ever adds time); compare the two to
    judge how noisy the measurement was.
    """
    sizes = sorted(set(sizes) | {1})
    samples = time_verify(model, sizes, context, repeats)
    median = {k: statistics.median(v) for k, v in samples.items()}
    fastest = {k: min(v) for k, v in samples.items()}
    return {
        "context_tokens": context,
        "repeats": repeats,
        "sizes": sizes,
        "seconds": {k: median[k] for k in sizes},
        "seconds_min": {k: fastest[k] for k in sizes},
        "relative": {k: median[k] / median[1] for k in sizes},
        "relative_min": {k: fastest[k] / fastest[1] for k in sizes},
    }


@dataclass
class CostModel:
    """Seconds per plain decoding step and per verification of n tokens."""

    plain: float
    verify: dict  # tokens verified (root included) -> seconds
    heads: dict  # depth -> seconds to draft a chain that deep
    # Seconds per further node the heads expand (sequential heads draft each
    # branch on its own: see draft.py); 0 for plain heads.
    per_expanded_node: float = 0.0

    def relative(self, tree_size: int, depth: int, expanded: int = 0) -> float:
        sizes = sorted(self.verify)
        verify = float(np.interp(tree_size, sizes, [self.verify[s] for s in sizes]))
        extra = self.per_expanded_node * max(expanded - depth, 0)
        return (verify + self.heads[depth] + extra) / self.plain


def _min_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs: on a shared machine other work only ever adds
    time, so the minimum is the least noisy estimate of the cost itself."""
    fn()  # warm-up (graph building, allocations)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.min(times))


def measure_cost(model, sizes=COST_SIZES, prefix_len: int = 128,
                 repeats: int = 9) -> CostModel:
    """Time verification forwards of ``sizes`` tokens after a ``prefix_len``-token
    prompt (:func:`time_verify`, fastest repeat), a plain step, and drafting chains
    (and, for sequential heads and context drafters, a wide tree)."""
    rng = np.random.default_rng(0)
    vocab = model.heads.args.vocab_size
    cache = model.make_cache()
    model.backbone(mx.array(rng.integers(0, vocab, (1, prefix_len))), cache=cache)
    mx.eval([c.state for c in cache])

    def plain_step():
        _, logits = model.forward(mx.array([[1]]), cache)
        mx.eval(mx.argmax(logits[0, -1]))
        for c in cache:
            c.trim(1)

    hidden = mx.random.normal((model.heads.args.hidden_size,))
    drafter_cache = model.make_drafter_cache()  # a context drafter reads the prompt too
    if drafter_cache is not None:
        drafter_cache.append(mx.random.normal((prefix_len, model.heads.args.hidden_size)),
                             rng.integers(0, vocab, prefix_len).tolist())

    def draft(paths):
        tree = build_tree(paths)
        plan = drafting_plan(model, tree)

        def once():
            if drafter_cache is not None:  # as after a step: one entry (the root's) to add
                drafter_cache.trim_to(prefix_len)
            mx.eval(draft_step(model, tree, plan, 1, hidden, [], None, drafter_cache)[1])

        return once

    K = model.num_heads
    plain = _min_seconds(plain_step, repeats)
    verify_cost = {n: min(t) for n, t in time_verify(model, sizes, prefix_len, repeats).items()}
    chains = {d: [(0,) * i for i in range(1, d + 1)] for d in range(1, K + 1)}
    heads_cost = {d: _min_seconds(draft(chain), repeats) for d, chain in chains.items()}
    per_node = 0.0
    wide = [p for p in PRESETS["tree-64"] if len(p) <= K]
    # Sequential heads and a context drafter draft each expanded node's children.
    expands = model.heads.args.sequential or is_context(model.heads)
    if expands and expanded_nodes(wide) > K:
        extra = _min_seconds(draft(wide), repeats) - heads_cost[K]
        per_node = max(extra, 0.0) / (expanded_nodes(wide) - K)
    # More tokens never cost less: smooth what timing noise is left.
    sizes = sorted(verify_cost)
    monotone = np.maximum.accumulate([verify_cost[n] for n in sizes])
    verify_cost = {n: float(t) for n, t in zip(sizes, monotone)}
    heads_cost = dict(zip(sorted(heads_cost),
                          np.maximum.accumulate([heads_cost[d] for d in sorted(heads_cost)])))
    return CostModel(plain, verify_cost, {d: float(t) for d, t in heads_cost.items()}, per_node)
