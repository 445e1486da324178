"""Heads that also see the next token (``next_token_input``): exact greedy output,
the right token fed at every step, training, and their features."""

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from tiny_models import tiny_model

from medusa_mlx.convert import main as convert_main
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.heads import load_heads, save_heads
from medusa_mlx.model import attach_heads, split_backbone, wrap
from medusa_mlx.train import TrainConfig, fresh_heads, medusa_loss, train
from medusa_mlx.train_data import IGNORE, TokenSequence, compute_features
from medusa_mlx.evaluate import head_accuracy

PROMPT = [3, 17, 42, 9, 88]


def plain_greedy(backbone, prompt, n):
    steps = generate_step(mx.array(prompt), backbone, max_tokens=n)
    return [int(t) for t, _ in steps]


def medusa_tokens(model, prompt, n, **kwargs):
    return [t for step in medusa_generate_step(prompt, model, max_tokens=n, **kwargs)
            for t in step.tokens]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # untied and tied embeddings
@pytest.mark.parametrize("tree", ["chain-3", "tree-16"])
def test_greedy_token_identical(arch, tree):
    backbone = tiny_model(arch, seed=1)
    # Random (not zero) token weights: the heads' guesses really depend on the token.
    model = attach_heads(backbone, num_heads=3, next_token_input=True, seed=2)
    assert medusa_tokens(model, PROMPT, 120, tree=tree) == plain_greedy(backbone, PROMPT, 120)


def test_heads_see_each_steps_root_token():
    """The token embedded for the heads is, every step, the last token emitted."""
    model = attach_heads(tiny_model("llama", seed=1), num_heads=3, next_token_input=True)
    seen = []

    def recording_embed(ids):
        seen.append(int(ids.item()))
        return model.embed(ids)

    steps = list(medusa_generate_step(PROMPT, dataclasses.replace(model, embed=recording_embed),
                                      max_tokens=60, tree="tree-16"))
    roots = [step.tokens[-1] for step in steps[:-1]]
    assert seen == roots and len(seen) > 5


def test_heads_guesses_depend_on_the_token():
    model = attach_heads(tiny_model("llama", seed=1), num_heads=2, next_token_input=True)
    hidden = mx.random.normal((64,), key=mx.random.key(0))
    a = model.head_logits(hidden, 2, mx.array(5))
    b = model.head_logits(hidden, 2, mx.array(6))
    assert not mx.allclose(a, b)
    with pytest.raises(ValueError, match="next_token"):
        model.head_logits(hidden, 2)


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def sequences(backbone):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(8):
        tokens = rng.integers(0, 128, 4).tolist()
        start = len(tokens) - 1
        tokens += plain_greedy(backbone, tokens, 40)
        out.append(TokenSequence(tokens, start))
    return out


@pytest.fixture(scope="module")
def features(backbone, sequences):
    return compute_features(backbone, sequences)


def test_features_record_the_next_token(features, sequences):
    """Row t holds z[t+1]: the token the base model puts right after position t."""
    first = sequences[0]
    n = len(first.tokens) - first.start
    # Generated greedily, so z[j] is the sequence's own token for j > start.
    assert features.next_tokens[: n - 1].tolist() == first.tokens[first.start + 1 :]
    # Head 0's target at t is z[t+2], which is the next token of row t+1.
    labels = features.labels[:, 0]
    ok = labels[:-1] != IGNORE
    assert np.array_equal(labels[:-1][ok], features.next_tokens[1:][ok])


def test_step_zero_token_heads_equal_base_next_token_logits(backbone):
    body, lm_head = split_backbone(backbone)
    heads = fresh_heads(lm_head, 64, 128, TrainConfig(num_heads=2, next_token_input=True))
    hidden = body(mx.array([PROMPT]))[0]
    embedding = body.embed_tokens(mx.array([1, 2, 3, 4, 5]))
    logits = heads(hidden, lm_head, token_embedding=embedding)
    assert mx.allclose(logits[1], lm_head(hidden), atol=1e-5)


def test_training_token_heads_lowers_loss_and_beats_plain_heads(backbone, features):
    body, lm_head = split_backbone(backbone)
    embed = body.embed_tokens
    results = {}
    for token_input in (False, True):
        config = TrainConfig(num_heads=2, steps=120, batch_size=64, learning_rate=3e-3,
                             warmup_steps=5, next_token_input=token_input)
        heads = fresh_heads(lm_head, 64, 128, config)
        history = train(heads, lm_head, features, config, show_progress=False, embed=embed)
        assert history[-1].loss < history[0].loss
        results[token_input] = head_accuracy(heads, lm_head, features, embed=embed)["top1"]
    # Knowing token t+1 makes guessing t+2 easier: head 0 must do better with it.
    assert results[True][0] > results[False][0]


def test_training_token_heads_needs_the_embedding(backbone, features):
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, steps=2, next_token_input=True)
    heads = fresh_heads(lm_head, 64, 128, config)
    with pytest.raises(ValueError, match="embed"):
        train(heads, lm_head, features, config, show_progress=False)
    x = mx.zeros((2, 64))
    with pytest.raises(ValueError, match="token_embedding"):
        medusa_loss(heads, lm_head, x, mx.array([[1, 2], [3, 4]]))


def test_save_load_round_trip_and_vllm_export_refused(backbone, tmp_path, capsys):
    model = attach_heads(backbone, num_heads=2, next_token_input=True, seed=4)
    save_heads(tmp_path / "heads", model.heads)
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["next_token_input"] is True
    loaded = wrap(backbone, load_heads(tmp_path / "heads"))
    hidden = mx.ones((64,))
    assert mx.array_equal(loaded.head_logits(hidden, 2, mx.array(7)),
                          model.head_logits(hidden, 2, mx.array(7)))
    assert convert_main([str(tmp_path / "heads"), "-o", str(tmp_path / "v"), "--to", "vllm"]) == 1
    assert "no vLLM equivalent" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
