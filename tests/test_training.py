"""Medusa head training on a tiny random model (fast)."""

import dataclasses
import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_models import greedy_sequences, tiny_model

from medusa_mlx.heads import HeadsArgs, init_heads
from medusa_mlx.backbone import split_backbone
from medusa_mlx.training.trainer import (
    TrainConfig,
    fresh_heads,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    medusa_loss,
    train,
)
from medusa_mlx.training.data import IGNORE, compute_features, head_labels
from medusa_mlx.cost import CostModel
from medusa_mlx.training.tree_search import choose_tree, expected_length, grow_tree
from medusa_mlx.tree import expanded_nodes


class WordTokenizer:
    """Token ids written as words: "3 7 5" -> [3, 7, 5]; 0 is EOS."""

    eos_token_ids = [0]
    bos_token_id = None

    def encode(self, text, add_special_tokens=True):
        return [int(w) for w in text.split()]


def count_generated_prompts(monkeypatch) -> list:
    """Record every prompt the data pipeline sends to the model from now on."""
    import medusa_mlx.training.data as td

    generated, real = [], td.generate_batched

    def counting(model, prompts, *args, **kwargs):
        generated.extend(prompts)
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(td, "generate_batched", counting)
    return generated


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def features(backbone):
    """Greedy continuations of a few random prompts, as the trainer would build them."""
    return compute_features(backbone, greedy_sequences(backbone, 6))


def test_head_labels_shift_by_two_plus_k():
    targets = [10, 11, 12, 13, 14, 15]
    labels = head_labels(targets, start=1, num_heads=3)
    # Row r is position t = r + 1; head k's target is targets[t + 2 + k].
    assert labels.tolist() == [
        [13, 14, 15],
        [14, 15, IGNORE],
        [15, IGNORE, IGNORE],
        [IGNORE, IGNORE, IGNORE],
        [IGNORE, IGNORE, IGNORE],
    ]


def test_loss_weights_heads_by_decay_and_ignores_missing_labels():
    """Hand-built: logits are fixed, so each head's CE is known in closed form."""
    args = HeadsArgs(hidden_size=4, vocab_size=4, num_heads=2, num_layers=1)
    heads = init_heads(args, zero_blocks=True, lm_head_weight=mx.eye(4))
    hidden = mx.array([[2.0, 0, 0, 0], [0, 3.0, 0, 0]])  # zero blocks: logits == hidden
    labels = mx.array([[0, 1], [2, IGNORE]])
    loss, (correct, counts) = medusa_loss(heads, None, hidden, labels, decay=0.8)

    def ce(row, label):
        row = np.array(row)
        return float(np.log(np.exp(row).sum()) - row[label])

    head0 = (ce([2, 0, 0, 0], 0) + ce([0, 3, 0, 0], 2)) / 2
    head1 = ce([2, 0, 0, 0], 1)  # the second row has no label for head 1
    assert loss.item() == pytest.approx(head0 + 0.8 * head1, rel=1e-5)
    assert correct.tolist() == [1, 0] and counts.tolist() == [2, 1]


def test_step_zero_heads_equal_base_next_token_logits(backbone):
    body, lm_head = split_backbone(backbone)
    hidden = body(mx.array([[1, 5, 9, 2]]))
    for shared in (False, True):
        config = TrainConfig(num_heads=3, shared_lm_head=shared)
        heads = fresh_heads(lm_head, 64, 128, config)
        logits = heads(hidden, lm_head)
        for k in range(3):
            assert mx.allclose(logits[k], lm_head(hidden), atol=1e-5).item()


def _params(heads):
    return {k: np.array(v) for k, v in tree_flatten(heads.parameters())}


def test_training_lowers_loss(backbone, features):
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, steps=30, batch_size=64, learning_rate=3e-3,
                         warmup_steps=3)
    heads = fresh_heads(lm_head, 64, 128, config)
    history = train(heads, lm_head, features, config, show_progress=False)
    assert np.mean([h.loss for h in history[-5:]]) < np.mean([h.loss for h in history[:5]])


def test_resume_reproduces_uninterrupted_run(backbone, features, tmp_path):
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, steps=6, batch_size=32, grad_accum=2,
                         learning_rate=3e-3, warmup_steps=2, checkpoint_every=3, seed=7)
    full = fresh_heads(lm_head, 64, 128, config)
    train(full, lm_head, features, config, out_dir=tmp_path / "full", show_progress=False)

    # A run interrupted after step 3: only that checkpoint survives.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-000003",
                    resumed_dir / "checkpoints" / "step-000003")
    resumed = fresh_heads(lm_head, 64, 128, config)
    history = train(resumed, lm_head, features, config, out_dir=resumed_dir, resume=True,
                    show_progress=False)
    assert [h.step for h in history] == [4, 5, 6]
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    opt_full, opt_resumed = make_optimizer(config), make_optimizer(config)
    load_checkpoint(latest_checkpoint(tmp_path / "full"), fresh_heads(lm_head, 64, 128, config),
                    opt_full)
    load_checkpoint(latest_checkpoint(resumed_dir), fresh_heads(lm_head, 64, 128, config),
                    opt_resumed)
    assert opt_full.state["step"].item() == opt_resumed.state["step"].item() == 6
    for (ka, va), (kb, vb) in zip(tree_flatten(opt_full.state), tree_flatten(opt_resumed.state)):
        assert ka == kb
        np.testing.assert_array_equal(np.array(va), np.array(vb))


def test_same_seed_same_heads(backbone, features):
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, steps=4, batch_size=32, seed=1)
    runs = []
    for _ in range(2):
        heads = fresh_heads(lm_head, 64, 128, config)
        train(heads, lm_head, features, config, show_progress=False)
        runs.append(_params(heads))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


def test_tree_choice_from_measured_acceptance_and_cost():
    # Head 0 right 60% of the time at rank 0, 20% at rank 1; head 1 right only
    # when head 0 is right at rank 0 (half of those times).
    n = 1000
    rank = np.full((2, n), 10)
    rank[0, :600] = 0
    rank[0, 600:800] = 1
    rank[1, :300] = 0
    assert expected_length(rank, [(0,), (1,), (0, 0)]) == pytest.approx(1 + 0.6 + 0.2 + 0.3)
    assert grow_tree(rank, 3) == [(0,), (0, 0), (1,)]
    # Verification cost flat: the larger tree wins; steep: the chain of one.
    flat = CostModel(1.0, {1: 1.0, 100: 1.0}, {1: 0.0, 2: 0.0})
    steep = CostModel(1.0, {1: 1.0, 2: 1.0, 100: 50.0}, {1: 0.0, 2: 0.0})
    assert len(choose_tree(rank, flat, max_nodes=8).paths) >= 3
    assert choose_tree(rank, steep, max_nodes=8).paths == [[0]]
    # Near-tie: [(0,)] gives 1.6 tokens per step at cost 1.0, [(0,), (0, 0)] 1.9 at
    # 1.19 (1.597, 0.2% slower). Within the tie margin the tree that accepts more wins.
    tie = CostModel(1.0, {1: 0.9, 2: 0.9, 3: 1.09, 100: 50.0}, {1: 0.1, 2: 0.1})
    assert choose_tree(rank, tie, max_nodes=8, speed_tie=0.0).paths == [[0]]
    assert choose_tree(rank, tie, max_nodes=8).paths == [[0], [0, 0]]
    # Branch drafting runs sequential heads once per expanded node: a chain of
    # depth 2 expands 2 nodes (root, (0,)), {(0,), (1,), (0,0), (1,0)} expands 3.
    drafting = CostModel(1.0, {1: 1.0, 100: 1.0}, {1: 0.0, 2: 0.2}, per_expanded_node=0.1)
    assert drafting.relative(3, 2, expanded_nodes([(0,), (0, 0)])) == pytest.approx(1.2)
    assert drafting.relative(5, 2, expanded_nodes([(0,), (1,), (0, 0), (1, 0)])) == pytest.approx(1.3)


def test_observed_vocab_loss_trains_shared_heads(backbone, features):
    """The cheap loss (softmax over label tokens only) still lowers the full-vocab loss."""
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, shared_lm_head=True, steps=30, batch_size=64,
                         learning_rate=3e-3, warmup_steps=3, loss_vocab="observed")
    heads = fresh_heads(lm_head, 64, 128, config)
    x, y = mx.array(features.hidden).astype(mx.float32), mx.array(features.labels[:, :2])
    before, _ = medusa_loss(heads, lm_head, x, y)
    train(heads, lm_head, features, config, show_progress=False)
    after, _ = medusa_loss(heads, lm_head, x, y)
    assert after.item() < before.item()


def test_head_vocab_loss_scores_only_the_head_vocabulary(backbone, features):
    """loss_vocab='head': the softmax runs over the heads' head_vocab tokens in
    their order, and a label outside it is skipped rather than mislabelled."""
    from medusa_mlx.training.trainer import restrict_vocab

    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, shared_lm_head=True, steps=30, batch_size=64,
                         learning_rate=3e-3, warmup_steps=3, loss_vocab="head")
    heads = fresh_heads(lm_head, 64, 128, config)
    with pytest.raises(ValueError, match="head_vocab"):
        train(heads, lm_head, features, config, show_progress=False)
    ids, counts = np.unique(features.labels[features.labels >= 0], return_counts=True)
    vocab = sorted(ids[np.argsort(-counts)[:20]].tolist())
    heads.args.extra["head_vocab"] = vocab
    projection, labels = restrict_vocab(lm_head, features.labels[:, :2], heads.args, "head")
    x = mx.array(features.hidden[:5]).astype(mx.float32)
    np.testing.assert_allclose(np.array(projection(x)), np.array(lm_head(x))[:, vocab], atol=1e-4)
    inside = np.isin(features.labels[:, :2], vocab)
    assert (labels[~inside] == IGNORE).all()
    assert (np.array(vocab)[labels[inside]] == features.labels[:, :2][inside]).all()

    y_slots = mx.array(labels)
    before, _ = medusa_loss(heads, projection, mx.array(features.hidden).astype(mx.float32), y_slots)
    train(heads, lm_head, features, config, show_progress=False)
    after, _ = medusa_loss(heads, projection, mx.array(features.hidden).astype(mx.float32), y_slots)
    assert after.item() < before.item()


def test_answer_cache_resumes_and_skips_generation(backbone, tmp_path, monkeypatch):
    """Answers are saved one by one as they finish; a later run (another split or
    an interrupted one) generates only what is missing, and a line cut short by
    a kill is ignored."""
    import medusa_mlx.training.data as td

    records = [td.Record(text=f"{i + 1} {i + 7} {i + 3} 5") for i in range(5)]
    config = td.DataConfig(files=[], mode="generate", prompt_tokens=4, max_new_tokens=12,
                           batch_size=4)
    cache = td.AnswerCache(tmp_path / "answers.jsonl")
    first = td.build_sequences(backbone, WordTokenizer(), records, config, answers=cache)
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 5
    # The same answers as plain greedy decoding (no EOS in a random model's 12 tokens).
    body, lm_head = split_backbone(backbone)
    tokens = first[0].tokens[:4]
    for _ in range(12):
        tokens.append(int(mx.argmax(lm_head(body(mx.array([tokens])))[0, -1])))
    assert first[0].tokens == tokens

    # Drop two answers and cut the last line short, as a killed run would leave it.
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    (tmp_path / "answers.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    generated = count_generated_prompts(monkeypatch)
    again = td.build_sequences(backbone, WordTokenizer(), records, config,
                               answers=td.AnswerCache(tmp_path / "answers.jsonl"))
    assert [s.tokens for s in again] == [s.tokens for s in first]
    assert len(generated) == 2
    generated.clear()
    td.build_sequences(backbone, WordTokenizer(), records, config,
                       answers=td.AnswerCache(tmp_path / "answers.jsonl"))
    assert generated == []


def test_sampled_answers_add_varied_training_text(backbone, tmp_path, monkeypatch):
    """--samples-per-prompt: each training prompt also gets N sampled answers,
    cached apart from the greedy one and from each other; held-out stays greedy."""
    import medusa_mlx.training.data as td

    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(f"{i + 1} {i + 7} {i + 3} 5" for i in range(10)) + "\n")
    config = td.DataConfig(files=[str(data)], mode="generate", prompt_tokens=4,
                           max_new_tokens=12, batch_size=4, held_out=0.2,
                           samples_per_prompt=2, sample_temp=1.0)
    records = td.read_records([data])[:4]
    cache = td.AnswerCache(tmp_path / "answers.jsonl")
    greedy = td.build_sequences(backbone, WordTokenizer(), records, config, answers=cache)
    drawn = [td.build_sequences(backbone, WordTokenizer(), records, config, answers=cache, sample=i)
             for i in range(2)]
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 12
    for a, b, c in zip(greedy, *drawn):
        assert a.tokens[:4] == b.tokens[:4] == c.tokens[:4] and a.start == b.start == 3
    assert [s.tokens for s in drawn[0]] != [s.tokens for s in greedy]
    assert [s.tokens for s in drawn[0]] != [s.tokens for s in drawn[1]]

    monkeypatch.setattr(td, "generate_batched", lambda *a, **k: pytest.fail("regenerated"))
    again = td.build_sequences(backbone, WordTokenizer(), records, config, sample=1,
                               answers=td.AnswerCache(tmp_path / "answers.jsonl"))
    assert [s.tokens for s in again] == [s.tokens for s in drawn[1]]
    monkeypatch.undo()

    dataset = td.prepare(backbone, WordTokenizer(), "tiny", config, tmp_path / "cache", log=lambda *a: None)
    rows = {split: (dataset.cache_dir / f"sequences-{split}.jsonl").read_text().splitlines()
            for split in ("train", "held_out")}
    assert len(rows["train"]) == 3 * 8 and len(rows["held_out"]) == 2
    assert len({json.dumps(json.loads(r)["tokens"]) for r in rows["train"]}) > 8
    with pytest.raises(ValueError, match="samples-per-prompt"):  # text is not sampled
        td.build_sequences(backbone, WordTokenizer(), records, dataclasses.replace(config, mode="text"),
                           sample=0)
    # Without sampling, the cache key is the one older runs made.
    plain = dataclasses.replace(config, samples_per_prompt=0, sample_temp=0.5)
    assert td.cache_key("m", plain) == td.cache_key("m", dataclasses.replace(plain, sample_temp=0.7))
    assert td.cache_key("m", plain) != td.cache_key("m", config)


def test_extra_data_trains_without_moving_the_held_out_split(backbone, tmp_path, monkeypatch):
    """--extra-data: every extra record trains; the held-out split, and the cached
    features of --data, are exactly those of a run without it."""
    import medusa_mlx.training.data as td

    docs, more = tmp_path / "docs.txt", tmp_path / "more.txt"
    docs.write_text("\n\n".join(f"{i + 1} {i + 7} {i + 3} 5" for i in range(10)) + "\n")
    more.write_text("\n\n".join(f"{i + 2} 9 {i + 4} 6" for i in range(4)) + "\n")
    config = td.DataConfig(files=[str(docs)], mode="generate", prompt_tokens=4,
                           max_new_tokens=12, batch_size=4, held_out=0.2)
    quiet = dict(log=lambda *a: None)
    base = td.prepare(backbone, WordTokenizer(), "tiny", config, tmp_path / "cache", **quiet)

    generated = count_generated_prompts(monkeypatch)
    both = td.prepare(backbone, WordTokenizer(), "tiny", dataclasses.replace(config, extra_files=[str(more)]),
                      tmp_path / "cache", **quiet)
    assert sorted(generated) == sorted([[i + 2, 9, i + 4, 6] for i in range(4)])
    assert both.cache_dir == base.cache_dir
    np.testing.assert_array_equal(both.held_out.hidden, base.held_out.hidden)
    assert both.held_out_prompts == base.held_out_prompts
    assert len(both.train) == len(base.train) + 4 * 13  # 4 answers of 12 tokens + last prompt token
    np.testing.assert_array_equal(both.train.hidden[: len(base.train)], base.train.hidden)
    assert both.train.next_tokens.shape == (len(both.train),)
    # Keys made before extra files existed stay valid; adding files makes a new one.
    plain = td.cache_key("m", config)
    assert plain == td.cache_key("m", dataclasses.replace(config, extra_files=[]))
    assert plain != td.cache_key("m", dataclasses.replace(config, extra_files=[str(more)]))
