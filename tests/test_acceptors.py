"""Sampling with Medusa: lossless means *exactly* the base model's distribution.

The statistical tests compare the first three tokens emitted after a context
with their exact distribution, obtained by enumerating the (filtered, so small)
support with the base model. Seeds are fixed, so every test is deterministic;
the bound is a chi-square critical value at alpha = 1e-4.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_sampler

from medusa_mlx.attention import tree_attention
from medusa_mlx.draft import heads_topk
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.model import attach_heads
from medusa_mlx.acceptors import (
    GreedyAcceptor,
    LosslessAcceptor,
    SamplerSettings,
    TypicalAcceptor,
    make_acceptor,
    sampling_probs,
)
from medusa_mlx.tree import build_tree, tree_from_spec
from tiny_models import VOCAB, tiny_model

PROMPT = [1, 5, 9, 17, 33, 2, 64]
ROOT = 42
# Small supports make the 3-token joint distribution estimable from a few
# thousand samples. B combines every filter, decided before the temperature.
SETTINGS = {
    "topk": SamplerSettings(temp=0.7, top_k=4),
    "mixed": SamplerSettings(temp=1.0, top_p=0.6, min_p=0.4, top_k=5),
}


@pytest.fixture(scope="module")
def models():
    backbone = tiny_model("llama")
    return backbone, attach_heads(backbone, num_heads=4, seed=1)


# ---------------------------------------------------------------- helpers


def exact_distribution(backbone, context, settings, n):
    """Exact P(first n tokens) under plain sampling, by enumeration, plus the
    conditional next-token rows used to complete shorter samples."""
    dist, cond = {(): 1.0}, {}
    for _ in range(n):
        prefixes = list(dist)
        logits = backbone(mx.array([context + list(pf) for pf in prefixes]))[:, -1]
        rows = np.array(sampling_probs(logits, settings), np.float64)
        new = {}
        for pf, row in zip(prefixes, rows):
            cond[pf] = row / row.sum()
            for t in np.flatnonzero(row):
                new[pf + (int(t),)] = dist[pf] * cond[pf][t]
        dist = new
    return dist, cond


def complete(tokens, cond, n, rng):
    """Extend a sample to n tokens with the exact conditionals (a speculative
    step may emit fewer than n): the step is exact iff the completed samples
    follow the joint distribution."""
    tokens = tuple(tokens[:n])
    while len(tokens) < n:
        row = cond.get(tokens)
        if row is None:  # left the support: an impossible sample
            return None
        tokens += (int(rng.choice(len(row), p=row)),)
    return tokens


def chi_square(samples, dist):
    """Pearson statistic (cells with expected < 5 pooled) and its critical value
    at alpha = 1e-4 (Wilson-Hilferty). A sample outside the support fails outright."""
    n = len(samples)
    counts: dict = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    impossible = sum(c for s, c in counts.items() if s not in dist)
    big = [s for s, p in dist.items() if n * p >= 5]
    pooled_p = 1.0 - sum(dist[s] for s in big)
    pooled_c = n - impossible - sum(counts.get(s, 0) for s in big)
    stat = sum((counts.get(s, 0) - n * dist[s]) ** 2 / (n * dist[s]) for s in big)
    cells = len(big)
    if n * pooled_p >= 1:
        stat += (pooled_c - n * pooled_p) ** 2 / (n * pooled_p)
        cells += 1
    df, z = cells - 1, 3.719  # z of 1 - 1e-4
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    tv = 0.5 * sum(abs(counts.get(s, 0) / n - dist.get(s, 0.0)) for s in set(counts) | set(dist))
    return stat if impossible == 0 else math.inf, critical, tv


def oracle_rows(backbone, context, depth, topk, order="good"):
    """Good heads: head d's guesses are the base model's most likely tokens d+1
    places after the root, along the most likely path. ``order="duplicate"``
    repeats each guess once, so siblings share tokens; ``order="reversed"``
    ranks them worst first (misranked heads: plausible tokens at low ranks)."""
    rows, context = [], list(context)
    for _ in range(depth):
        ranked = np.argsort(-np.array(backbone(mx.array(context)[None])[0, -1])).tolist()
        row = ranked[:topk]
        if order == "duplicate":
            row = [t for t in ranked[:topk] for _ in range(2)][:topk]
        elif order == "reversed":
            row = row[::-1]
        rows.append(row)
        context.append(ranked[0])
    return mx.array(rows)


def greedy_oracle(backbone):
    """Proposer whose rank-0 guesses are the base model's argmax continuation of
    the actual history (rank r: r-th most likely token)."""

    def propose(hidden, history):
        return oracle_rows(backbone, history, 3, 10)  # >= the tree's top-k

    return propose


def tree_step(model, backbone, tree_name, heads):
    """Candidates and tree logits of the first decoding step after PROMPT,ROOT."""
    tree = tree_from_spec(tree_name, model.num_heads)
    cache = model.make_cache()
    hidden, _ = model.forward(mx.array(PROMPT)[None], cache)
    if heads == "poor":
        topk = heads_topk(model, hidden[0, -1], tree.depth, tree.topk)
    else:
        topk = oracle_rows(backbone, PROMPT + [ROOT], tree.depth, tree.topk, heads)
    candidates = mx.concatenate([mx.array([ROOT]), topk.reshape(-1).astype(mx.int32)])[mx.array(tree.gather)]
    with tree_attention(model.position_slots, cache, mx.array(tree.mask), mx.array(tree.depths)):
        _, logits = model.forward(candidates[None], cache)
    return tree, candidates, logits[0]


def step_statistic(models, acceptor, heads, settings, n_samples=3000, n_tokens=3):
    backbone, model = models
    tree, candidates, logits = tree_step(model, backbone, "tree-16", heads)
    dist, cond = exact_distribution(backbone, PROMPT + [ROOT], settings, n_tokens)
    rng = np.random.default_rng(123)
    samples, accepted = [], 0
    tokens_of = np.array(candidates).tolist()
    for _ in range(n_samples):
        result = acceptor.accept(tree, candidates, logits)
        accepted += result.accepted
        emitted = [tokens_of[j] for j in result.nodes[1:]] + [result.bonus]
        samples.append(complete(emitted, cond, n_tokens, rng))
    return (*chi_square(samples, dist), accepted / n_samples)


# ---------------------------------------------------------------- the sampler's distribution


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(temp=1.0),
        SamplerSettings(temp=0.5, top_p=0.9),
        SamplerSettings(temp=2.0, min_p=0.1, min_tokens_to_keep=3),
        SamplerSettings(temp=0.8, top_k=7),
        SamplerSettings(temp=1.3, top_p=0.7, min_p=0.05, top_k=12),
    ],
)
def test_sampling_probs_match_mlx_lm(settings):
    logits = mx.random.normal((32, 50), key=mx.random.key(0)) * 2.0
    # Exact: the same masks as mlx-lm's filter functions, then temperature.
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    masked = logprobs
    if 0 < settings.top_p < 1:
        masked = apply_top_p(masked, settings.top_p)
    if settings.min_p:
        masked = apply_min_p(masked, settings.min_p, settings.min_tokens_to_keep)
    if settings.top_k:
        masked = apply_top_k(masked, settings.top_k)
    expected = np.array(mx.softmax(masked / settings.temp, axis=-1))
    ours = np.array(sampling_probs(logits, settings))
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert ((ours > 0) == (expected > 0)).all()
    # Statistical: make_sampler itself draws from this distribution.
    sampler = make_sampler(
        temp=settings.temp, top_p=settings.top_p, min_p=settings.min_p,
        min_tokens_to_keep=settings.min_tokens_to_keep, top_k=settings.top_k,
    )  # fmt: skip
    mx.random.seed(0)
    n = 20000
    draws = np.array(sampler(mx.broadcast_to(logprobs[0], (n, 50))))
    freq = np.bincount(draws, minlength=50) / n
    assert (freq[ours[0] == 0] == 0).all()
    assert 0.5 * np.abs(freq - ours[0]).sum() < 0.03


def test_temperature_zero_probs_is_argmax():
    logits = mx.array([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    assert np.array(sampling_probs(logits, SamplerSettings(temp=0.0))).tolist() == [[0, 1, 0], [1, 0, 0]]


# ---------------------------------------------------------------- lossless: one tree step


@pytest.mark.parametrize(
    "heads,setting",
    [("poor", "topk"), ("good", "topk"), ("reversed", "topk"), ("duplicate", "mixed"), ("good", "mixed")],
)
def test_lossless_step_matches_base_distribution(models, heads, setting):
    settings = SETTINGS[setting]
    acceptor = LosslessAcceptor(settings, seed=7)
    stat, critical, tv, accepted = step_statistic(models, acceptor, heads, settings)
    assert stat < critical, f"chi2 {stat:.1f} >= {critical:.1f} (TV {tv:.3f})"
    if heads != "poor":
        # Rejection *and* acceptance must really be exercised.
        assert 0.3 < accepted < 2.5


class DoubledAcceptance(LosslessAcceptor):
    """Biased: accepts with min(1, 2 r(x))."""

    def acceptance_probability(self, p_x, rejected_mass):
        return min(1.0, 2.0 * super().acceptance_probability(p_x, rejected_mass))


class NoResidual(LosslessAcceptor):
    """Biased: never renormalises after a rejection and draws the bonus from p
    instead of the residual (the classic mistake)."""

    def acceptance_probability(self, p_x, rejected_mass):
        return p_x

    def residual(self, row, rejected):
        return row.astype(np.float64)


@pytest.mark.parametrize("variant", [DoubledAcceptance, NoResidual])
def test_biased_variants_fail_the_same_test(models, variant):
    # The statistic above has power: each plausible bug is caught by a wide margin.
    settings = SETTINGS["topk"]
    stat, critical, tv, _ = step_statistic(models, variant(settings, seed=7), "good", settings)
    assert stat > 2 * critical, f"biased rule not detected: chi2 {stat:.1f}, critical {critical:.1f}"


def test_lossless_end_to_end_matches_base_distribution(models):
    """The whole loop (prefill sample, tree step, compaction, next step), with
    heads that know the base model's likely continuations of the real history."""
    backbone, model = models
    settings = SETTINGS["topk"]
    acceptor = LosslessAcceptor(settings, seed=11)
    dist, _ = exact_distribution(backbone, PROMPT, settings, 3)
    samples, accepted = [], 0
    for _ in range(500):
        steps = list(
            medusa_generate_step(PROMPT, model, max_tokens=3, tree="tree-16", acceptor=acceptor, proposer=greedy_oracle(backbone))
        )
        samples.append(tuple(t for s in steps for t in s.tokens))
        accepted += sum(s.accepted for s in steps)
    stat, critical, tv = chi_square(samples, dist)
    assert stat < critical, f"chi2 {stat:.1f} >= {critical:.1f} (TV {tv:.3f})"
    assert accepted > 100  # head tokens were accepted, not only bonus tokens


# ---------------------------------------------------------------- temperature 0, seeds, typical


def plain_greedy(backbone, n):
    return [t for t, _ in generate_step(mx.array(PROMPT), backbone, max_tokens=n)]


@pytest.mark.parametrize("mode", ["greedy", "typical", "lossless"])
def test_temperature_zero_is_greedy(models, mode):
    backbone, model = models
    ref = plain_greedy(backbone, 120)
    acceptor = make_acceptor(mode, temp=0.0, top_p=0.5, top_k=3, seed=1)
    out = [t for s in medusa_generate_step(PROMPT, model, max_tokens=120, tree="tree-16", acceptor=acceptor) for t in s.tokens]
    assert out == ref
    # Built directly (not through make_acceptor), temp 0 still means greedy.
    direct = {"typical": TypicalAcceptor, "lossless": LosslessAcceptor}.get(mode)
    if direct is not None:
        acceptor = direct(SamplerSettings(temp=0.0), seed=1)
        out = [t for s in medusa_generate_step(PROMPT, model, max_tokens=120, tree="tree-16", acceptor=acceptor) for t in s.tokens]
        assert out == ref


def sample_tokens(model, acceptor, n=40, **kwargs):
    steps = medusa_generate_step(PROMPT, model, max_tokens=n, tree="tree-16", acceptor=acceptor, **kwargs)
    return [t for s in steps for t in s.tokens]


@pytest.mark.parametrize("mode", ["typical", "lossless"])
def test_same_seed_same_tokens(models, mode):
    _, model = models
    runs = [sample_tokens(model, make_acceptor(mode, temp=1.0, seed=s)) for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # Without a seed, mx.random.seed fixes the stream (as for mlx-lm's samplers).
    mx.random.seed(5)
    first = sample_tokens(model, make_acceptor(mode, temp=1.0))
    mx.random.seed(5)
    assert sample_tokens(model, make_acceptor(mode, temp=1.0)) == first


def test_typical_accepts_more_than_lossless_with_oracle_heads(models):
    """Typical acceptance always keeps the argmax token: max p >= exp(-H(p)) (min-
    entropy <= entropy) > alpha exp(-H) >= threshold. With oracle heads it accepts
    the full depth every step, at least what lossless acceptance gets."""
    backbone, model = models
    kwargs = dict(tree="tree-16", proposer=greedy_oracle(backbone))
    lengths = {}
    for mode in ("typical", "lossless"):
        acceptor = make_acceptor(mode, temp=1.0, seed=2)
        steps = list(medusa_generate_step(PROMPT, model, max_tokens=60, acceptor=acceptor, **kwargs))[1:-1]
        lengths[mode] = [s.accepted for s in steps]
    assert all(a == 3 for a in lengths["typical"])
    assert np.mean(lengths["typical"]) >= np.mean(lengths["lossless"])
    assert np.mean(lengths["lossless"]) > 0.3  # the comparison is not against zero


def test_typical_rule_by_hand():
    """Accept iff p(x) > min(eps, alpha exp(-H)); longest path; ties by likelihood."""
    tree = build_tree([(0,), (1,), (0, 0), (1, 0)])  # nodes: root, 0, 1, 0-0, 1-0
    p_root = np.array([0.5, 0.3, 0.1, 0.1])  # H = 1.17: min(.09, .3 e^-H = .093) = .09
    p_flat = np.full(4, 0.25)  # H = log 4: threshold .075
    p_peak = np.array([0.97, 0.01, 0.01, 0.01])  # H = .17: threshold .09
    logits = mx.array(np.log(np.stack([p_root, p_flat, p_peak, p_flat, p_flat])), dtype=mx.float32)
    settings = SamplerSettings(temp=1.0)

    def nodes(candidates, **kwargs):
        acc = TypicalAcceptor(settings, seed=0, **kwargs).accept(tree, mx.array(candidates), logits)
        assert 0 <= acc.bonus < 4
        return acc.nodes

    # Every token passes; the depth-2 tie goes to the likelier path (.3*.97 > .5*.25).
    assert nodes([9, 0, 1, 2, 0]) == [0, 2, 4]
    # p = .1 > .09 passes; the longer path wins although its first token is less likely
    # (token 2 after the peaked row, p = .01, fails).
    assert nodes([9, 2, 1, 3, 2]) == [0, 1, 3]
    # eps .2, alpha .5: root threshold .155 rejects p = .1, keeps p = .3.
    assert nodes([9, 2, 1, 3, 2], posterior_threshold=0.2, posterior_alpha=0.5) == [0, 2]


def test_make_acceptor_choices():
    assert isinstance(make_acceptor(), GreedyAcceptor)
    assert isinstance(make_acceptor("lossless", temp=0.0), GreedyAcceptor)
    assert isinstance(make_acceptor("typical", temp=0.7), TypicalAcceptor)
    assert isinstance(make_acceptor("lossless", temp=0.7, top_p=0.9), LosslessAcceptor)
    with pytest.raises(ValueError, match="unknown accept mode"):
        make_acceptor("nucleus", temp=1.0)
    with pytest.raises(ValueError, match="needs temp=0"):
        make_acceptor("greedy", temp=1.0)
    with pytest.raises(ValueError, match="temp"):
        make_acceptor("lossless", temp=-1.0)
    assert VOCAB == 128
