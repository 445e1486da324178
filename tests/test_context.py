"""The context drafter (EAGLE-style heads, issue #20) does all that heads do.

A random drafter accepts almost nothing, which would leave compaction, deep
acceptance and non-first branches untested; so each tiny model gets a drafter
fitted in-process (a few hundred milliseconds of Adam) to its own greedy
continuations of a few random prompts. Decoding from those prompts then
accepts at several depths, rejects, and goes down non-first branches, while a
prompt it never saw exercises the mostly-wrong drafter.
"""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)

import threading
from dataclasses import replace
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache

from medusa_mlx.acceptors import GreedyAcceptor, LosslessAcceptor, make_acceptor
from medusa_mlx.bench import cli as bench_cli
from medusa_mlx.attention import tree_attention
from medusa_mlx.backbone import inspect_backbone, lm_head_weight
from medusa_mlx import load
from medusa_mlx.context import drafter_args_for, init_drafter
from medusa_mlx.conversation import encode_prompt
from medusa_mlx.heads import load_heads, save_heads
from medusa_mlx.chat.session import ChatSession
from medusa_mlx.draft import context_candidates, context_plan
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.loaders.llama2c import load_llama2c
from medusa_mlx.model import attach_heads, is_context, medusa_model
from medusa_mlx.server.requests import GenerationRequest
from medusa_mlx.server.worker import Failed, Finished, Job, Worker
from medusa_mlx.tree import tree_for_model, tree_from_spec
from medusa_mlx.cost import measure_cost
from medusa_mlx.training.context import ContextTrainConfig, drafter_ranks, train_drafter
from medusa_mlx.training.tree_search import choose_tree, expected_length
from medusa_mlx.training.sequences import sequence_features
from required_data import require_file
from test_acceptors import SETTINGS, chi_square, complete, exact_distribution
from test_chat import stories_with_tokenizers
from tiny_models import greedy_sequences, tiny_model
from zoo_models import zoo_model

PROMPT = [1, 5, 9, 17, 33, 2, 64]  # never seen by the fitted drafters
TREES = ("chain-3", "tree-16", "tree-64")
NEW_TOKENS = 72


def backbone_of(arch: str) -> nn.Module:
    """tiny_models' architectures, else a zoo model (partial rotary, odd layouts)."""
    try:
        return tiny_model(arch)
    except KeyError:
        return zoo_model(arch)


def fit_drafter(backbone: nn.Module, steps: int = 60, sequences: int = 4, seed: int = 0):
    """A MedusaModel whose context drafter was fitted with the package's own
    training (``training.context``: EAGLE-1 loss plus one training-time-test
    pass) to the backbone's greedy continuations of ``sequences`` random
    prompts; returns it with those prompts (most varied continuation first)."""
    parts = inspect_backbone(backbone)
    model = medusa_model(backbone, init_drafter(drafter_args_for(
        parts.hidden_size, parts.vocab_size, backbone.args), seed=seed))
    data = greedy_sequences(backbone, sequences, new_tokens=60, seed=seed)
    train_drafter(model.heads, *training_inputs(model, data),
                  ContextTrainConfig(steps=steps, batch_size=sequences, window=64,
                                     learning_rate=1e-2, warmup_steps=1, token_weight=1.0,
                                     unroll=2, seed=seed), log=lambda *a: None)
    varied = sorted(data, key=lambda s: -len(set(s.tokens[4:])))  # most varied first
    return model, [s.tokens[:4] for s in varied]


def training_inputs(model, data):
    """(output weight, embed, sequence features, slots) for ``train_drafter``."""
    features = sequence_features(model.backbone, [(s.tokens, s.start) for s in data])
    weight = lm_head_weight(model.output_path, features.hidden.shape[1])
    return weight, model.embed, features, np.arange(weight.shape[0], dtype=np.int32)


class RecordingAcceptor(GreedyAcceptor):
    """Greedy, remembering every step's tree and accepted nodes."""

    def __init__(self):
        self.steps = []

    def accept(self, tree, candidates, logits):
        result = super().accept(tree, candidates, logits)
        self.steps.append((tree, result.nodes))
        return result


def off_first_branch(acceptor: RecordingAcceptor) -> int:
    """Steps whose accepted path leaves the first branch (a rank > 0 on it)."""
    return sum(any(any(tree.paths[n]) for n in nodes) for tree, nodes in acceptor.steps)


def plain_greedy(backbone, prompt, n):
    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n)]


def run(model, prompt, n, **kwargs):
    steps = list(medusa_generate_step(prompt, model, max_tokens=n, **kwargs))
    return [t for s in steps for t in s.tokens], steps[1:]


@pytest.fixture(scope="module")
def fitted_llama():
    return fit_drafter(tiny_model("llama"))


# ---------------------------------------------------------------- greedy exactness


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "phi3", "gptj", "nanochat"])
def test_greedy_token_identical_and_accepting(arch):
    backbone = backbone_of(arch)
    model, seen = fit_drafter(backbone)
    accepted, rejected, off_first = [], 0, 0
    for prompt in (seen[0], PROMPT):
        ref = plain_greedy(backbone, prompt, NEW_TOKENS)
        assert len(set(ref)) > 3, f"{arch}: degenerate reference, the test would be weak"
        for tree in TREES:
            acceptor = RecordingAcceptor()
            out, steps = run(model, prompt, NEW_TOKENS, tree=tree, acceptor=acceptor)
            assert out == ref, f"{arch} {tree}: differs from mlx-lm greedy"
            depth = tree_from_spec(tree, model.num_heads).depth
            accepted += [s.accepted for s in steps]
            rejected += sum(s.accepted < depth for s in steps[:-1])
            if tree == "tree-16":
                off_first += off_first_branch(acceptor)
    assert max(accepted) >= 2 and rejected > 0, f"{arch}: accepted {np.bincount(accepted)}"
    assert off_first > 0, f"{arch}: never accepted down a non-first branch of tree-16"


def test_dynamic_tree_is_exact_accepts_deep_and_keeps_the_cache_fresh(fitted_llama):
    """EAGLE-2's dynamic tree (tree="dynamic-N"): grown each step from the
    drafter's cumulative probabilities, verified like any tree."""
    model, seen = fitted_llama
    for prompt in (seen[0], PROMPT):
        ref = plain_greedy(model.backbone, prompt, NEW_TOKENS)
        for spec in ("dynamic-4", "dynamic-12"):
            cache, drafter_cache = model.make_cache(), model.make_drafter_cache()
            acceptor = RecordingAcceptor()
            out, steps = run(model, prompt, NEW_TOKENS, tree=spec, acceptor=acceptor,
                             prompt_cache=cache, drafter_cache=drafter_cache)
            assert out == ref, spec
            sizes = {tree.size for tree, _ in acceptor.steps}
            assert sizes == {int(spec.split("-")[1])}, sizes
            if prompt is seen[0]:
                assert max(s.accepted for s in steps) >= 3, spec
            assert_fresh(model, drafter_cache, prompt + out[:-1])
    shapes = {tuple(tree.parents.tolist()) for tree, _ in acceptor.steps}
    assert len(shapes) > 1, "the tree never changed shape: not dynamic"


def test_a_dynamic_tree_needs_a_context_drafter():
    backbone = tiny_model("llama")
    with pytest.raises(ValueError, match="grown each step by a context drafter"):
        run(attach_heads(backbone, num_heads=3), [1, 2, 3], 8, tree="dynamic-8")
    with pytest.raises(ValueError, match="node count"):
        tree_from_spec("dynamic-x", 4)


# ---------------------------------------------------------------- the drafter's cache


def assert_fresh(model, drafter_cache, text):
    """``drafter_cache`` after decoding ``text`` (everything the backbone cache
    holds) equals a from-scratch recomputation: the backbone's features of the
    whole text in one forward, then one causal drafter pass from its start."""
    start, n = drafter_cache.start, drafter_cache.kv.offset
    assert drafter_cache.tokens == text[start:] and drafter_cache.end == len(text)
    features, _ = model.forward(mx.array(text)[None], None)
    kv = KVCache()
    model.heads(features[:, start:start + n], model.embed(mx.array(text[start + 1:start + n + 1]))[None],
                kv, positions=start)
    assert np.abs(np.array(drafter_cache.features) - np.array(features[0, start:])).max() <= 1e-4
    for got, want in ((drafter_cache.kv.keys, kv.keys), (drafter_cache.kv.values, kv.values)):
        assert np.abs(np.array(got[..., :n, :]) - np.array(want[..., :n, :])).max() <= 1e-4


def test_drafter_cache_equals_recomputation_after_compaction(fitted_llama):
    model, seen = fitted_llama
    prompt = seen[0]
    ref = plain_greedy(model.backbone, prompt, 100)
    cache, drafter_cache, acceptor = model.make_cache(), model.make_drafter_cache(), RecordingAcceptor()
    out, steps = run(model, prompt, 60, tree="tree-64", prompt_cache=cache,
                     drafter_cache=drafter_cache, acceptor=acceptor)
    assert out == ref[:60] and off_first_branch(acceptor) > 0 and max(s.accepted for s in steps) >= 3
    text = prompt + out[:-1]  # the last emitted token is never cached
    assert cache[0].offset == len(text) and drafter_cache.kv.offset >= len(text) - 6
    assert_fresh(model, drafter_cache, text)
    # The next call continues from both caches: still exact, still fresh.
    more, _ = run(model, [out[-1]], 40, tree="tree-16", prompt_cache=cache,
                  drafter_cache=drafter_cache)
    assert more == ref[60:100]
    assert_fresh(model, drafter_cache, text + [out[-1]] + more[:-1])


def test_prompt_lookup_beside_the_drafter_keeps_output_exact_and_cache_fresh(fitted_llama):
    """Lookup's branches merged into the drafted tree (and steps that verify
    lookup's branches alone, without drafting): the appended features follow
    the merged tree's accepted nodes."""
    model, seen = fitted_llama
    prompt = seen[0] + plain_greedy(model.backbone, seen[0], 40)  # text that repeats itself
    cache, drafter_cache = model.make_cache(), model.make_drafter_cache()
    out, steps = run(model, prompt, 60, tree="tree-16", lookup=True, prompt_cache=cache,
                     drafter_cache=drafter_cache)
    assert out == plain_greedy(model.backbone, prompt, 60)
    sizes = {s.tree_size for s in steps}
    assert max(sizes) > 16 and min(sizes) < 16, sizes  # merged trees, and lookup's alone
    assert_fresh(model, drafter_cache, prompt + out[:-1])


@pytest.fixture(scope="module")
def stories(shared_dir):
    """stories260K with a fitted drafter, its plain tokenizer and a templated one."""
    backbone, tokenizer, templated = stories_with_tokenizers(shared_dir)
    return fit_drafter(backbone)[0], tokenizer, templated


def test_chat_turns_keep_the_drafter_cache_fresh_and_answers_exact(stories):
    model, _, templated = stories
    questions = ["Once upon a time, a girl named Lily found a big red ball.", "The dog was happy.",
                 "They went home."]
    s = ChatSession(model, templated, max_tokens=40)
    plain = ChatSession(model, templated, max_tokens=40, medusa=False)
    for question in questions[:2]:
        s.ask(question)
        plain.ask(question)
        assert s.cached == plain.cached  # greedy: the same answers, the same text
        assert s.conversation.drafter.start == 0
        assert_fresh(model, s.conversation.drafter, s.cached)
    # A plain turn in between: the drafter knows nothing of it and starts again
    # after it (still consistent); the next Medusa turn is exact.
    assert "plain" in s.command("/medusa off").text
    s.ask(questions[2])
    s.command("/medusa on")
    s.ask("The end.")
    plain.ask(questions[2])
    plain.ask("The end.")
    assert s.cached == plain.cached and s.conversation.drafter.start > 0
    assert_fresh(model, s.conversation.drafter, s.cached)
    s.command("/reset")
    assert s.conversation.drafter.end == 0


def test_server_conversation_keeps_the_drafter_cache_fresh(stories):
    """Two requests of one conversation through the worker (in this process, on
    this thread, as the server runs it): the second reuses the first's caches."""
    model, tokenizer, _ = stories
    worker = Worker(model, tokenizer)
    first = [1] + tokenizer.encode("Once upon a time")
    answer = plain_greedy(model.backbone, first, 30)
    second = first + answer[:12] + [13, 45]  # an edited answer: the caches are cut back
    finished, seen = [], []

    def request(prompt):
        job = Job(GenerationRequest("text", prompt, 30, 0.0, 0.0, 0, 0.0, "greedy"))
        worker.submit(job)
        events = [job.events.get(timeout=120)]
        while not isinstance(events[-1], (Finished, Failed)):
            events.append(job.events.get(timeout=120))
        finished.append(events[-1])
        seen.append(list(worker.pool.idle[-1].tokens))

    def client():  # no MLX work off the worker's thread
        try:
            while not worker.healthy:
                time.sleep(0.01)
            request(first)
            request(second)
        finally:
            worker.stop()

    thread = threading.Thread(target=client)
    thread.start()
    worker.run()
    thread.join()
    assert [type(f) for f in finished] == [Finished, Finished], finished
    assert seen[0] == first + answer[:-1]
    assert finished[1].cached_tokens == len(first) + 12
    conversation = worker.pool.idle[-1]
    assert conversation.tokens == second + plain_greedy(model.backbone, second, 30)[:-1]
    assert_fresh(model, conversation.drafter, conversation.tokens)


# ---------------------------------------------------------------- sampling


def test_lossless_step_with_drafted_candidates_matches_base_distribution(fitted_llama):
    """test_acceptors' chi-square test of one lossless tree step, on the tree the
    context drafter drafts (from a context it was fitted on, so it is right often)."""
    model, seen = fitted_llama
    backbone, settings = model.backbone, SETTINGS["topk"]
    ref = plain_greedy(backbone, seen[0], 8)
    context, root = seen[0] + ref[:6], ref[6]
    tree = tree_from_spec("tree-16", model.num_heads)
    cache, drafter_cache = model.make_cache(), model.make_drafter_cache()
    hidden, _ = model.forward(mx.array(context)[None], cache)
    drafter_cache.append(hidden[0], context)
    candidates = context_candidates(model, drafter_cache, root, tree, context_plan(tree))
    with tree_attention(model.position_slots, cache, mx.array(tree.mask), mx.array(tree.depths)):
        _, logits = model.forward(candidates[None], cache)
    dist, cond = exact_distribution(backbone, context + [root], settings, 3)
    acceptor, rng = LosslessAcceptor(settings, seed=7), np.random.default_rng(123)
    tokens_of, samples, accepted = np.array(candidates).tolist(), [], 0
    for _ in range(3000):
        result = acceptor.accept(tree, candidates, logits[0])
        accepted += result.accepted
        samples.append(complete([tokens_of[j] for j in result.nodes[1:]] + [result.bonus], cond, 3, rng))
    stat, critical, tv = chi_square(samples, dist)
    assert stat < critical, f"chi2 {stat:.1f} >= {critical:.1f} (TV {tv:.3f})"
    assert 0.3 < accepted / 3000, "the drafter's tokens were hardly ever accepted"


def test_lossless_end_to_end_with_drafter_matches_base_distribution(fitted_llama):
    """The whole loop with the drafter cache (prefill, drafting, compaction, the
    next step's catch-up) samples exactly the base model's first three tokens."""
    model, seen = fitted_llama
    settings = SETTINGS["topk"]
    prompt = seen[0] + plain_greedy(model.backbone, seen[0], 6)
    dist, _ = exact_distribution(model.backbone, prompt, settings, 3)
    acceptor = LosslessAcceptor(settings, seed=11)
    samples, accepted = [], 0
    for _ in range(400):
        out, steps = run(model, prompt, 3, tree="tree-16", acceptor=acceptor)
        samples.append(tuple(out))
        accepted += sum(s.accepted for s in steps)
    stat, critical, tv = chi_square(samples, dist)
    assert stat < critical, f"chi2 {stat:.1f} >= {critical:.1f} (TV {tv:.3f})"
    assert accepted > 80  # drafted tokens were accepted, not only bonus tokens


@pytest.mark.parametrize("mode", ["typical", "lossless"])
def test_sampling_acceptors_with_drafter_greedy_at_zero_and_seeded(fitted_llama, mode):
    model, seen = fitted_llama
    out, _ = run(model, seen[0], NEW_TOKENS, tree="tree-16", acceptor=make_acceptor(mode, temp=0.0, seed=1))
    assert out == plain_greedy(model.backbone, seen[0], NEW_TOKENS)
    runs = [run(model, seen[0], 40, tree="tree-16", acceptor=make_acceptor(mode, temp=1.0, seed=s))
            for s in (3, 3, 4)]
    assert runs[0][0] == runs[1][0] != runs[2][0]
    assert sum(s.accepted for s in runs[0][1]) > 0


# ---------------------------------------------------------------- files, trees, real models

SAVED_TREE = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 0, 0)]


def test_save_load_round_trip_and_saved_tree(stories, shared_dir, tmp_path):
    """save_drafter -> load(model, medusa=folder): same weights, ``tree="auto"``
    is the tree saved in the config, greedy output exact and the same tokens."""
    model, tokenizer, _ = stories
    save_heads(tmp_path / "drafter", model.heads, {"tree": [list(p) for p in SAVED_TREE]})
    loaded, _ = load(str(shared_dir / "data" / "stories260K.bin"), medusa=str(tmp_path / "drafter"))
    assert is_context(loaded.heads) and replace(loaded.heads.args, extra={}) == model.heads.args
    for (name, a), (_, b) in zip(tree_flatten(model.heads.parameters()),
                                 tree_flatten(loaded.heads.parameters())):
        assert mx.array_equal(a, b), name
    tree = tree_for_model("auto", loaded)
    assert tree.paths[1:] == tuple(SAVED_TREE) and tree.name == "auto"
    assert load_heads(tmp_path / "drafter").args.extra["tree"] == [list(p) for p in SAVED_TREE]
    prompt = tokenizer.encode("Tom had a red kite.")
    out, steps = run(loaded, prompt, 120)  # tree="auto"
    assert out == plain_greedy(loaded.backbone, prompt, 120)
    assert {s.tree_size for s in steps} == {len(SAVED_TREE) + 1}
    assert out == run(model, prompt, 120, tree=SAVED_TREE)[0]


@pytest.mark.parametrize("tree", ["chain-4", "tree-16", "tree-64"])
def test_stories260k_random_drafter_equals_plain(shared_dir, tree):
    backbone, tokenizer = load_llama2c(require_file(shared_dir / "data" / "stories260K.bin"))
    model = medusa_model(backbone, init_drafter(drafter_args_for(64, 512, backbone.args), seed=3))
    prompt = [tokenizer.bos_token_id]  # (the round trip above decodes another prompt)
    assert run(model, prompt, 150, tree=tree)[0] == plain_greedy(backbone, prompt, 150)


def test_stories260k_shipped_drafter_is_exact_and_drafts_deep(shared_dir):
    """The drafter shipped beside stories260K's heads (``--medusa stories260K-context``):
    exact with its measured tree, and accepting well past Medusa's head 0 on a
    story it was not trained on."""
    model, tokenizer = load(str(require_file(shared_dir / "data" / "stories260K.bin")),
                            medusa="stories260K-context")
    assert is_context(model.heads)
    prompt = tokenizer.encode("The little dog found a shiny stone in the garden.")
    out, steps = run(model, prompt, 120, tree="auto")
    assert out == plain_greedy(model.backbone, prompt, 120)
    assert len(out) / (len(steps) + 1) > 2.5, len(out) / (len(steps) + 1)


@pytest.mark.smollm2
def test_smollm2_shipped_drafter_is_exact_and_accepts():
    """``--medusa smollm2-context``: the drafter trained on SmolLM2's own answers."""
    model, tokenizer = load(None, medusa="smollm2-context")
    assert is_context(model.heads)
    prompt = encode_prompt(tokenizer, [{"role": "user", "content":
                                        "Tom has 3 apples and buys 5 more. How many now?"}])
    out, steps = run(model, prompt, 64, tree="auto")
    assert out == plain_greedy(model.backbone, prompt, 64)
    assert len(out) / (len(steps) + 1) > 1.3


@pytest.mark.smollm2
def test_smollm2_random_drafter_equals_plain():
    backbone, tokenizer = load(medusa=False)
    parts = inspect_backbone(backbone.backbone)
    model = medusa_model(backbone.backbone, init_drafter(
        drafter_args_for(parts.hidden_size, parts.vocab_size, backbone.backbone.args), seed=3))
    prompt = encode_prompt(tokenizer, "What is the capital of France?", chat_template=True)
    assert run(model, prompt, 32, tree="tree-16")[0] == plain_greedy(model.backbone, prompt, 32)


def test_benchmark_runs_with_a_drafter_folder(stories, shared_dir, tmp_path):
    """``medusa_mlx.bench --medusa <drafter folder>``: every method exact, the
    profile's heads column is the drafting cost, the config says the kind."""
    model, _, _ = stories
    save_heads(tmp_path / "drafter", model.heads)
    args = bench_cli.configure_parser().parse_args([
        "--model", str(shared_dir / "data" / "stories260K.bin"), "--medusa", str(tmp_path / "drafter"),
        "--trees", "chain-3,tree-8", "--max-tokens", "24", "--num-prompts", "2", "--verify-sizes", ""])
    result = bench_cli.benchmark(args, log=lambda _: None)
    assert result["config"]["heads_kind"] == "context" and result["config"]["num_heads"] == 5
    medusa = [m for m in result["methods"] if m["kind"] == "medusa"]
    assert len(medusa) == 2 and all(m["output_equal"] for m in result["methods"])
    assert all(m["step_ms"]["heads"] > 0 for m in medusa), medusa[0]["step_ms"]


def test_benchmark_compares_heads_folders_in_one_run(stories, shared_dir, tmp_path):
    """``--compare-heads DIR``: the shipped Medusa heads and a drafter on one
    backbone, interleaved in one run against the same plain-greedy baseline."""
    model, _, _ = stories
    save_heads(tmp_path / "drafter", model.heads)
    args = bench_cli.configure_parser().parse_args([
        "--model", str(shared_dir / "data" / "stories260K.bin"), "--compare-heads",
        str(tmp_path / "drafter"), "--trees", "chain-2,dynamic-4", "--max-tokens", "24",
        "--num-prompts", "2", "--verify-sizes", ""])
    result = bench_cli.benchmark(args, log=lambda _: None)
    names = [(m["name"], m["tree"]) for m in result["methods"]]
    # dynamic-4 is a drafter's tree: skipped for the Medusa heads, run for the drafter.
    assert names == [("mlx-lm greedy", None), ("medusa", "chain-2"),
                     ("medusa [drafter]", "chain-2"), ("medusa [drafter]", "dynamic-4")], names
    assert all(m["output_equal"] for m in result["methods"])
    assert result["config"]["compare_heads"]["drafter"]["kind"] == "context"
    assert result["config"]["heads_kind"] == "medusa"
    assert all(len(m["speedup_per_prompt"]) == 2 for m in result["methods"][1:])
    from rich.console import Console

    from medusa_mlx.bench.report import render

    console = Console(record=True, width=220)
    render(result, console)
    assert console.export_text().count("medusa [drafter]") == 2  # not swallowed as markup


def test_measured_ranks_replay_real_decoding_and_choose_a_tree(fitted_llama):
    """Tree search for a drafter (``drafter_ranks``): a depth-d node of the step
    at s is scored as decoding computes it on the right path (true tokens, the
    drafter's own features), so replaying chain-3 over greedy text accepts
    exactly what real chain-3 decoding accepts, step by step."""
    model, seen = fitted_llama
    rows = []
    for prompt in seen[:3]:
        rows.append((prompt + plain_greedy(model.backbone, prompt, 48), len(prompt) - 1))
    data = sequence_features(model.backbone, rows)
    project = model.head_projection or model.output_path
    rank, ends = drafter_ranks(model.heads, project, model.embed, data, None, model.num_heads)
    assert rank.shape == (model.num_heads, ends[-1])
    first = 0
    for (tokens, start), end in zip(rows, ends):
        _, steps = run(model, tokens[: start + 1], len(tokens) - start - 1, tree="chain-3")
        replayed, s = [], first
        while s < end and len(replayed) < len(steps):
            depth = 0
            while depth < 3 and rank[depth, s] == 0:
                depth += 1
            replayed.append(depth)
            s += depth + 1
        real = [step.accepted for step in steps]
        assert replayed[:-1] == real[:-1], (replayed, real)  # the last one is cut by max_tokens
        first = end
    assert max(real) >= 2
    choice = choose_tree(rank, measure_cost(model, sizes=(1, 2, 4, 8, 16), repeats=2), 16, ends)
    assert choice.paths and choice.expected_length > 1.0
    assert choice.expected_length == pytest.approx(expected_length(rank, choice.paths, ends))


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    """train_drafter on a tiny llama's own greedy text: the loss falls, and a run
    stopped at a checkpoint and resumed ends with exactly the weights of an
    uninterrupted run (step i's windows depend only on the seed and i)."""
    backbone = tiny_model("llama")
    parts = inspect_backbone(backbone)
    args = drafter_args_for(parts.hidden_size, parts.vocab_size, backbone.args)
    data = greedy_sequences(backbone, 4, new_tokens=40)
    config = ContextTrainConfig(steps=8, batch_size=2, window=32, learning_rate=3e-3,
                                warmup_steps=2, unroll=2, checkpoint_every=4)

    def fresh():
        model = medusa_model(backbone, init_drafter(args, seed=3))
        return model, training_inputs(model, data)

    model, inputs = fresh()
    history = train_drafter(model.heads, *inputs, replace(config, steps=30),
                            log=lambda *a: None)
    first, last = np.mean([h["loss"] for h in history[:3]]), np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.8 * first, (first, last)

    whole, inputs = fresh()
    train_drafter(whole.heads, *inputs, config, out_dir=tmp_path / "whole", log=lambda *a: None)
    part, inputs = fresh()
    train_drafter(part.heads, *inputs, config, out_dir=tmp_path / "part", until=4,
                  log=lambda *a: None)  # stopped after step 4
    resumed, inputs = fresh()  # a new process: fresh weights, state from the checkpoint
    train_drafter(resumed.heads, *inputs, config, out_dir=tmp_path / "part", resume=True,
                  log=lambda *a: None)
    for (name, a), (_, b) in zip(tree_flatten(whole.heads.parameters()),
                                 tree_flatten(resumed.heads.parameters())):
        assert np.array_equal(np.array(a), np.array(b)), name
