"""Prompt lookup: the n-gram index, proposals, merging with the heads' tree and
the budget, greedy exactness with and without heads, and lossless sampling."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step

from medusa_mlx.generate import generate, medusa_generate_step, stream_generate
from medusa_mlx.lookup import NgramIndex, PromptLookup, make_lookup
from medusa_mlx.model import attach_heads, medusa_model
from medusa_mlx.acceptors import LosslessAcceptor
from medusa_mlx.tree import build_tree, tree_from_parents, tree_from_spec
from tiny_models import ARCHITECTURES, tiny_model

# A prompt that repeats itself, so its continuation is partly in the prompt.
PROMPT = [1, 5, 9, 17, 33, 2, 64, 5, 9, 17, 33, 2, 64, 5, 9]


def scratch_index(tokens, min_n, max_n):
    ends = {}
    for i in range(len(tokens)):
        for n in range(min_n, max_n + 1):
            if i - n + 1 >= 0:
                ends.setdefault(tuple(tokens[i - n + 1 : i + 1]), []).append(i)
    return ends


# ------------------------------------------------------------------ index


def test_incremental_index_equals_index_built_from_scratch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, 300).tolist()
    index = NgramIndex(2, 4)
    for start in range(0, 300, 7):  # steps of varying size, as decoding adds them
        index.extend(tokens[start : start + 7])
    assert index.ends == scratch_index(tokens, 2, 4)


def test_ngrams_never_span_documents():
    index = NgramIndex(2, 3)
    index.extend([1, 2, 3])
    index.new_document()
    index.extend([4, 5])
    assert (3, 4) not in index.ends and (2, 3, 4) not in index.ends
    assert index.ends[(4, 5)] == [4]
    # A match in an earlier document continues only up to its end.
    assert index.continuation(0, 10) == [2, 3]


def test_continuation_repeats_a_loop_past_the_tail():
    index = NgramIndex(2, 2)
    index.extend([7, 1, 2, 3, 1, 2])  # (1, 2) ends at 2 and at the tail 5: period 3
    assert index.continuation(2, 7) == [3, 1, 2, 3, 1, 2, 3]


def test_propose_prefers_long_ngrams_and_recent_matches():
    lookup = PromptLookup(min_n=1, max_n=3, max_branches=3, max_len=2)
    lookup.begin([4, 5, 6, 9, 8, 6, 7, 5, 6])  # tail (5, 6): after it 9 (bigram); 6 alone: 7, 9
    branches = lookup.propose()
    assert [(b.tokens[0], b.n) for b in branches] == [(9, 2), (7, 1)]
    assert branches[0].tokens == [9, 8]


def test_begin_keeps_or_forgets_the_previous_generation():
    keep = PromptLookup(keep_past=True)
    forget = PromptLookup()
    for lookup in (keep, forget):
        lookup.begin([1, 2, 3, 4])
        lookup.begin([8, 2, 3])
    assert keep.propose()[0].tokens == [4]
    assert forget.propose() == []
    forget.begin([8, 2], continuing=True)  # the same text goes on
    assert forget.propose()[0].tokens[0] == 3


# ------------------------------------------------------------------ trees


def test_tree_from_parents_matches_build_tree():
    built = tree_from_spec("tree-16", 4)
    again = tree_from_parents(built.parents.tolist())
    assert again.paths == built.paths
    np.testing.assert_array_equal(again.mask, built.mask)
    np.testing.assert_array_equal(again.depths, built.depths)
    with pytest.raises(ValueError):
        tree_from_parents([-1, 2, 0])


def confident(**kwargs):
    return PromptLookup(prior=(0.95, 0.95, 1e6), **kwargs)


def test_merge_shares_prefixes_with_the_heads_tree():
    base = build_tree([(0,), (1,), (0, 0)])  # root, a, b, a->c
    base_tokens = [10, 11, 12, 13]
    lookup = confident(min_n=1, max_n=1)
    lookup.begin([10, 11, 13, 20, 21, 10])
    merged = lookup.merge(base, base_tokens, lookup.propose())
    tree, tokens = merged.tree, merged.tokens
    assert tokens[:4] == base_tokens and merged.added == tree.size - 4
    # 11, 13 are the heads' nodes 1 and 3; 20, 21 continue below node 3.
    assert merged.branches[0].nodes[:2] == [1, 3]
    new = merged.branches[0].nodes[2]
    assert tokens[new] == 20 and tree.parents[new] == 3
    # Every node's path of tokens is what the branch proposed.
    path = [tokens[j] for j in tree.path_nodes(merged.branches[0].nodes[-1])][1:]
    assert path == merged.branches[0].tokens[: len(path)]
    # Tokens are unique among siblings.
    for j in range(tree.size):
        kids = [tokens[k] for k in range(tree.size) if tree.parents[k] == j]
        assert len(kids) == len(set(kids))


def test_budget_follows_rates_and_the_cost_curve():
    root = tree_from_parents([-1])
    history = list(range(20)) + [0, 1]  # the tail (0, 1) continues with 2, 3, ..., 19
    sizes = {}
    for name, lookup in {
        "unreliable": PromptLookup(prior=(0.02, 0.02, 1e6)),
        "reliable": confident(),
        "flat": PromptLookup(prior=(0.5, 0.5, 1e6), verify_cost={1: 1.0, 64: 1.0}),
        "steep": PromptLookup(prior=(0.5, 0.5, 1e6), verify_cost={1: 1.0, 2: 1.5, 64: 40.0}),
    }.items():
        lookup.begin(history)
        sizes[name] = lookup.merge(root, [1], lookup.propose()).added
    assert sizes["unreliable"] == 0  # a plain step
    assert sizes["reliable"] == 16  # the whole continuation (max_len)
    assert sizes["flat"] == 16 and sizes["steep"] == 0


def test_heads_skipped_only_when_lookup_alone_is_worth_more():
    history = list(range(20)) + [0, 1]
    for lookup, tree_size, skip in (
        (confident(base_prior=(0.5, 1e6)), 8, True),  # a sure copy beats weak heads
        (confident(base_prior=(3.0, 1e6)), 8, False),  # heads that add 3 tokens a step
        (PromptLookup(prior=(0.05, 0.05, 1e6)), 8, False),  # an unlikely match
        (confident(), 1, False),  # no heads: nothing to skip
    ):
        lookup.begin(history)
        assert lookup.skip_base(tree_size) is skip
    lookup = confident()
    lookup.begin([1, 2, 3])
    assert not lookup.skip_base(8)  # no match


def test_rates_follow_what_was_accepted():
    lookup = PromptLookup(min_n=2, max_n=2, prior=(0.5, 0.5, 2.0), decay=1.0)
    lookup.begin(list(range(10)) + [0, 1])
    merged = lookup.merge(tree_from_parents([-1]), [1], lookup.propose())
    nodes = merged.branches[0].nodes
    assert len(nodes) >= 2
    lookup.observe(merged, [0, nodes[0]], 1)  # first token right, second wrong
    first, later = lookup.rates(2)
    assert first == pytest.approx(2 / 3) and later == pytest.approx(1 / 3)


def test_make_lookup():
    assert make_lookup(False) is None and make_lookup(None) is None
    assert isinstance(make_lookup(True), PromptLookup)
    mine = PromptLookup()
    assert make_lookup(mine) is mine
    with pytest.raises(TypeError):
        make_lookup("yes")


# ------------------------------------------------------------------ decoding


def plain_greedy(backbone, prompt, n):
    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_exact_with_lookup_alone_and_merged(arch):
    backbone = tiny_model(arch)
    reference = plain_greedy(backbone, PROMPT, 60)
    heads = attach_heads(backbone, 3, seed=1)
    # Lookup alone; merged (heads rated high: never skipped); lookup or heads, step by step.
    for model, base_prior in ((medusa_model(backbone, None), None), (heads, (3.0, 1e6)), (heads, None)):
        lookup = confident(base_prior=base_prior or (0.5, 4.0))  # propose whenever anything matches
        steps = list(medusa_generate_step(PROMPT, model, max_tokens=60, tree="tree-8", lookup=lookup))
        assert [t for s in steps for t in s.tokens] == reference, (arch, model.heads is None)
        base = 1 if model.heads is None else tree_from_spec("tree-8", 3).size
        assert any(s.tree_size > base for s in steps)  # lookup branches were verified


def test_stream_generate_takes_a_plain_mlx_lm_model(shared_dir):
    """Any supported mlx-lm model, no heads: lookup alone, exact (stories260K)."""
    from medusa_mlx.load import load_backbone

    backbone, tokenizer, _ = load_backbone(str(shared_dir / "data" / "stories260K.bin"))
    prompt = tokenizer.encode("Tom had a red kite. Tom had a red kite. Tom")
    reference = plain_greedy(backbone, prompt, 300)
    responses = list(stream_generate(backbone, tokenizer, prompt, max_tokens=300, lookup=True))
    assert [t for r in responses for t in r.tokens] == reference[: sum(len(r.tokens) for r in responses)]
    assert responses[-1].finish_reason in ("stop", "length")
    # Measured: 1.39 tokens/step (93 of 300 tokens from lookup branches).
    assert responses[-1].mean_tokens_per_step > 1.2
    text = generate(backbone, tokenizer, prompt, max_tokens=300, lookup=True)
    assert text == "".join(r.text for r in responses)


def test_lossless_sampling_exact_with_lookup_branches():
    """Chi-square over the first 3 tokens, as test_acceptors does, with lookup
    branches merged into the heads' tree. One drafter keeps every earlier
    sample (``keep_past``): its branches are what earlier runs emitted, which
    is often right and never depends on this run's own draws."""
    from test_acceptors import PROMPT as SP, SETTINGS, chi_square, exact_distribution

    backbone = tiny_model("llama")
    model = attach_heads(backbone, num_heads=2, seed=1)
    settings = SETTINGS["topk"]
    dist, _ = exact_distribution(backbone, SP, settings, 3)
    acceptor = LosslessAcceptor(settings, seed=5)
    lookup = PromptLookup(min_n=1, max_n=3, prior=(0.9, 0.9, 1e6), keep_past=True)
    samples, grown, accepted = [], 0, 0
    for _ in range(500):
        steps = list(medusa_generate_step(SP, model, max_tokens=3, tree="chain-1",
                                          acceptor=acceptor, lookup=lookup))
        samples.append(tuple(t for s in steps for t in s.tokens))
        grown += sum(s.tree_size > 2 for s in steps)
        accepted += sum(s.accepted for s in steps)
    stat, critical, tv = chi_square(samples, dist)
    assert stat < critical, f"chi2 {stat:.1f} >= {critical:.1f} (TV {tv:.3f})"
    assert grown > 300 and accepted > 200  # lookup branches were verified and accepted
