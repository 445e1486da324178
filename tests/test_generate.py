"""The heart of the suite: Medusa greedy == mlx-lm greedy, and why."""

import importlib

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

from medusa_mlx.attention import compact_cache, tree_attention
from medusa_mlx.conversation import ConversationCache, encode_prompt
from medusa_mlx.errors import UnsupportedModelError
from medusa_mlx.generate import ContextLengthError, medusa_generate_step
from medusa_mlx.model import attach_heads
from medusa_mlx.tree import tree_from_spec
from tiny_models import ARCHITECTURES, partial_oracle, tiny_model

# The module, not the function ``medusa_mlx.generate`` the package exports.
generate_module = importlib.import_module("medusa_mlx.generate")
PROMPT = [1, 5, 9, 17, 33, 2, 64]


def plain_greedy(backbone, prompt, n, cache=None):
    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n, prompt_cache=cache)]


def medusa_tokens(model, prompt, n, **kwargs):
    return [t for step in medusa_generate_step(prompt, model, max_tokens=n, **kwargs) for t in step.tokens]


@pytest.fixture(scope="module", params=ARCHITECTURES + ["llama-4bit"])
def arch_model(request):
    arch = request.param
    if arch == "llama-4bit":
        backbone = tiny_model("llama", quantize_bits=4)
    else:
        backbone = tiny_model(arch)
    return arch, backbone, attach_heads(backbone, num_heads=4, seed=1)


@pytest.mark.parametrize("tree", ["chain-3", "tree-16", "tree-64"])
def test_greedy_token_identical(arch_model, tree):
    arch, backbone, model = arch_model
    ref = plain_greedy(backbone, PROMPT, 200)
    assert len(set(ref)) > 3, f"{arch}: degenerate reference, the test would be weak"
    assert medusa_tokens(model, PROMPT, 200, tree=tree) == ref


def oracle(reference):
    """A proposer that knows the greedy continuation: rank 0 of head d is the
    true token d+1 places after the root; lower ranks are deliberately wrong."""

    def propose(hidden, history):
        rows = []
        for d in range(4):
            pos = len(history) + d
            true = reference[pos] if pos < len(reference) else 0
            rows.append([true] + [(true + r) % 128 for r in range(1, 10)])
        return mx.array(rows)

    return propose


@pytest.mark.parametrize("tree", ["chain-1", "chain-4", "tree-64"])
def test_oracle_heads_accept_full_depth(tree):
    backbone = tiny_model("llama")
    model = attach_heads(backbone, num_heads=4)
    ref = plain_greedy(backbone, PROMPT, 120)
    steps = list(
        medusa_generate_step(
            PROMPT, model, max_tokens=len(ref), tree=tree, proposer=oracle(PROMPT + ref)
        )
    )
    depth = tree_from_spec(tree, 4).depth
    assert [t for s in steps for t in s.tokens] == ref
    decode = steps[1:]
    assert all(s.accepted == depth for s in decode[:-1])
    full = decode[:-1]  # the last step may be cut by max_tokens
    assert np.mean([len(s.tokens) for s in full]) == depth + 1


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_tree_logits_equal_path_decoding(arch):
    backbone = tiny_model(arch)
    model = attach_heads(backbone)
    tree = tree_from_spec("tree-64", 4)
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, 128, size=tree.size)
    cache = model.make_cache()
    model.forward(mx.array(PROMPT)[None], cache)
    with tree_attention(model.position_slots, cache, mx.array(tree.mask), mx.array(tree.depths)):
        _, tree_logits = model.forward(mx.array(candidates)[None], cache)
    tree_logits = np.array(tree_logits[0])
    worst = 0.0
    for j in range(tree.size):
        path = [int(candidates[n]) for n in tree.path_nodes(j)]
        plain = backbone(mx.array(PROMPT + path)[None])
        worst = max(worst, float(np.abs(np.array(plain[0, -1]) - tree_logits[j]).max()))
    assert worst <= 1e-4


def test_windowed_tree_mask_is_mlx_lms_window_by_position():
    """A model may ask a plain KVCache for a sliding-window mask (exaone_moe builds
    one even when no layer uses it): on a chain it is exactly mlx-lm's mask, and in
    a tree each node's window is counted from its own position (offset + depth)."""
    from mlx_lm.models.base import create_causal_mask

    from medusa_mlx.attention import TreeKVCache

    cache, offset, window = TreeKVCache(), 9, 4
    cache.offset = offset
    chain = np.tril(np.ones((5, 5), dtype=bool))
    cache.tree_mask, cache.tree_depths = mx.array(chain), mx.arange(5)
    got = np.array(cache.make_mask(5, window_size=window))
    assert np.array_equal(got, np.array(create_causal_mask(5, offset, window_size=window)))
    tree = tree_from_spec("tree-16", 4)
    cache.tree_mask, cache.tree_depths = mx.array(tree.mask), mx.array(tree.depths)
    got = np.array(cache.make_mask(tree.size, window_size=window))
    for j in range(tree.size):
        seen = [p for p in range(offset) if offset + tree.depths[j] - p < window]
        seen += [offset + n for n in tree.path_nodes(j)]
        assert np.flatnonzero(got[j]).tolist() == sorted(seen)


def test_cache_after_compaction_equals_plain_decoding(monkeypatch):
    """Partially-right heads accept down non-first branches (keys are moved); the
    cache afterwards must hold exactly what plain decoding of the same tokens holds."""
    moved = []

    def spy(caches, prefix_len, keep):
        moved.append(keep != list(range(len(keep))))
        return compact_cache(caches, prefix_len, keep)

    monkeypatch.setattr(generate_module, "compact_cache", spy)
    backbone = tiny_model("llama")
    model = attach_heads(backbone)
    ref = plain_greedy(backbone, PROMPT, 60)
    medusa_cache = model.make_cache()
    tokens = medusa_tokens(model, PROMPT, 60, tree="tree-64", prompt_cache=medusa_cache,
                           proposer=partial_oracle(PROMPT + ref, seed=3, depth=4))
    assert tokens == ref and sum(moved) > 0
    # Plain decoding of the same tokens (the last emitted token is never cached).
    plain_cache = make_prompt_cache(backbone)
    backbone(mx.array(PROMPT + tokens[:-1])[None], cache=plain_cache)
    assert medusa_cache[0].offset == len(PROMPT) + len(tokens) - 1
    for mc, pc in zip(medusa_cache, plain_cache):
        pk, pv = pc.keys[..., : pc.offset, :], pc.values[..., : pc.offset, :]
        mk, mv = mc.keys[..., : mc.offset, :], mc.values[..., : mc.offset, :]
        assert np.abs(np.array(mk) - np.array(pk)).max() <= 1e-4
        assert np.abs(np.array(mv) - np.array(pv)).max() <= 1e-4


def test_oracle_compaction_over_branching_tree():
    """Oracle tokens at rank 1 force acceptance down non-first branches, so
    compaction has to move keys (a chain never does)."""
    backbone = tiny_model("llama")
    model = attach_heads(backbone)
    ref = plain_greedy(backbone, PROMPT, 80)
    truth = PROMPT + ref

    def rank1_oracle(hidden, history):
        rows = []
        for d in range(4):
            pos = len(history) + d
            true = truth[pos] if pos < len(truth) else 0
            rows.append([(true + 1) % 128, true] + [(true + r) % 128 for r in range(2, 10)])
        return mx.array(rows)

    cache = model.make_cache()
    steps = list(
        medusa_generate_step(PROMPT, model, max_tokens=80, tree=[(1,), (1, 1), (1, 1, 1), (0,), (0, 0)], proposer=rank1_oracle, prompt_cache=cache)
    )
    assert [t for s in steps for t in s.tokens] == ref
    assert max(s.accepted for s in steps) == 3
    # Continue decoding from the compacted cache: must match plain greedy further on.
    more = medusa_tokens(model, [ref[-1]], 20, prompt_cache=cache)
    assert more == plain_greedy(backbone, PROMPT + ref, 20)


def test_max_tokens_exact_and_eos_stops():
    backbone = tiny_model("llama")
    model = attach_heads(backbone)
    ref = plain_greedy(backbone, PROMPT, 100)
    for n in (1, 2, 7, 33):
        steps = list(medusa_generate_step(PROMPT, model, max_tokens=n, tree="tree-64", proposer=oracle(PROMPT + ref)))
        assert [t for s in steps for t in s.tokens] == ref[:n]
    eos = ref[41]
    stop = ref.index(eos)
    out = medusa_tokens(model, PROMPT, 100, tree="tree-64", proposer=oracle(PROMPT + ref), eos_token_ids=[eos])
    assert out == ref[: stop + 1]


def test_conversation_cache_reads_only_new_tokens_and_changes_nothing():
    """A second turn on a reused cache: only its new tokens are fed, and it says
    what a fresh cache says (half a tree left behind is trimmed away)."""
    backbone = tiny_model("llama")
    model = attach_heads(backbone, num_heads=4, seed=1)
    conversation = ConversationCache(model.make_cache())
    assert conversation.reuse(PROMPT) == 0
    answer = medusa_tokens(model, PROMPT, 20, tree="tree-16", prompt_cache=conversation.cache)
    for layer in conversation.cache:
        layer.offset += 3  # as if a step were interrupted mid-verification
    conversation.keep(PROMPT + answer[:-1])
    assert conversation.cache[0].offset == len(PROMPT) + 19
    turn2 = PROMPT + answer + [7, 8]
    kept = conversation.reuse(turn2)
    assert kept == len(PROMPT) + 19 and conversation.reuse(turn2[:5] + [99]) == 5
    kept = conversation.reuse(turn2)  # after losing the tail, only the shared 5 remain
    assert kept == 5
    again = medusa_tokens(model, turn2[kept:], 20, tree="tree-16", prompt_cache=conversation.cache)
    assert again == plain_greedy(backbone, turn2, 20)


def test_encode_prompt_joins_messages_without_a_chat_template():
    class Words:
        bos_token = None

        def encode(self, text, add_special_tokens=True):
            return [len(w) for w in text.split(" ")]

    messages = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": " cde"},
                {"role": "user", "content": "f"}]
    assert encode_prompt(Words(), messages) == [2, 3, 1]  # "ab cde f"
    assert encode_prompt(Words(), [4, 5]) == [4, 5]


def test_overlong_prompt_is_refused():
    backbone = tiny_model("llama", max_position_embeddings=32)
    model = attach_heads(backbone)
    with pytest.raises(ContextLengthError, match="does not fit the model's context of 32"):
        next(medusa_generate_step(list(range(40)), model))


def test_unsupported_architecture_is_refused():
    backbone = tiny_model("llama", layer_types=["sliding_attention", "full_attention"], sliding_window=16)
    with pytest.raises(UnsupportedModelError, match="'llama'.*RotatingKVCache"):
        attach_heads(backbone)


def test_head_vocab_restricts_candidates_and_keeps_output_exact():
    from medusa_mlx.draft import heads_topk
    from medusa_mlx.heads import HeadsArgs, init_heads
    from medusa_mlx.model import medusa_model

    backbone = tiny_model("qwen2")  # tied embeddings: the shared projection is embed_tokens
    vocab = list(range(0, 128, 3))
    args = HeadsArgs(64, 128, num_heads=3, shared_lm_head=True, extra={"head_vocab": vocab})
    model = medusa_model(backbone, init_heads(args, seed=2))
    hidden = model.forward(mx.array([PROMPT]), None)[0][0, -1]
    # The sliced projection scores exactly what the full one scores on those ids.
    full = model.heads(hidden, model.output_path, 3)
    assert np.allclose(np.array(model.head_logits(hidden, 3)), np.array(full)[:, vocab], atol=1e-5)
    top = heads_topk(model, hidden, 3, 5)
    assert set(np.array(top).ravel().tolist()) <= set(vocab)
    ref = plain_greedy(backbone, PROMPT, 150)
    assert medusa_tokens(model, PROMPT, 150, tree="tree-16") == ref
