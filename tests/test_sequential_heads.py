"""Sequential heads (each head also sees the token before its target): exact
greedy output, the right tokens fed at every step, training, and their features."""

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from tiny_models import greedy_sequences, tiny_model

from medusa_mlx.conversion.convert import main as convert_main
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.heads import load_heads, save_heads
from medusa_mlx.backbone import split_backbone, token_embedding
from medusa_mlx.model import attach_heads, medusa_model
from medusa_mlx.training.data import teacher_tokens
from medusa_mlx.training.trainer import TrainConfig, fresh_heads, medusa_loss, train
from medusa_mlx.training.data import IGNORE, compute_features
from medusa_mlx.training.evaluate import head_accuracy

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
    model = attach_heads(backbone, num_heads=3, sequential=True, seed=2)
    assert medusa_tokens(model, PROMPT, 120, tree=tree) == plain_greedy(backbone, PROMPT, 120)


def test_heads_see_each_steps_root_then_their_own_guesses():
    """Every step, head 0 sees the last token emitted and head k the best guess
    of head k-1, which is the depth-k token of the chain it proposes."""
    model = attach_heads(tiny_model("llama", seed=1), num_heads=3, sequential=True)
    seen = []

    def recording_embed(ids):
        seen.append(int(ids.item()))
        return model.embed(ids)

    recording = dataclasses.replace(model, embed=recording_embed)
    proposed = []
    real_forward = recording.forward

    def recording_forward(tokens, cache):
        proposed.append(tokens[0].tolist())  # root + the chain's 3 guesses
        return real_forward(tokens, cache)

    recording.forward = recording_forward
    steps = list(medusa_generate_step(PROMPT, recording, max_tokens=60, tree="chain-3"))
    roots = [step.tokens[-1] for step in steps[:-1]]
    assert [seen[i] for i in range(0, len(seen), 3)] == roots and len(roots) > 5
    # Head k saw exactly the chain's token at depth k (root for k = 0).
    assert [chain[:3] for chain in proposed[1:]] == [seen[i : i + 3]
                                                     for i in range(0, len(seen), 3)]


def test_heads_guesses_depend_on_the_token():
    model = attach_heads(tiny_model("llama", seed=1), num_heads=2, sequential=True)
    hidden = mx.random.normal((64,), key=mx.random.key(0))
    a = model.head_logits(hidden, 2, mx.array(5))
    b = model.head_logits(hidden, 2, mx.array(6))
    assert not mx.allclose(a, b)
    with pytest.raises(ValueError, match="next_token"):
        model.head_logits(hidden, 2)
    # Head 1 sees head 0's guess: a different guess changes head 1 as well.
    assert not mx.allclose(a[1], b[1])


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def sequences(backbone):
    return greedy_sequences(backbone, 8)


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


def test_step_zero_sequential_heads_equal_base_next_token_logits(backbone):
    body, lm_head = split_backbone(backbone)
    heads = fresh_heads(lm_head, 64, 128, TrainConfig(num_heads=2, sequential=True))
    hidden = body(mx.array([PROMPT]))[0]
    tokens = mx.array([[1], [2], [3], [4], [5]])
    logits = heads(hidden, lm_head, embed=token_embedding(backbone), tokens=tokens)
    assert mx.allclose(logits[1], lm_head(hidden), atol=1e-5)


def test_teacher_forcing_with_own_guesses_equals_inference(backbone):
    """Fed the tokens they would guess themselves, teacher-forced heads give the
    inference-mode logits: training and decoding run the same computation."""
    model = attach_heads(backbone, num_heads=3, sequential=True, seed=5)
    lm_head, embed = model.output_path, model.embed
    hidden = model.forward(mx.array([PROMPT]), None)[0][0]
    first = mx.array([[7], [8], [9], [10], [11]])
    free = model.heads(hidden, lm_head, embed=embed, tokens=first)
    guesses = mx.argmax(free[:2], axis=-1).T  # heads 0 and 1's best tokens, (5, 2)
    forced = model.heads(hidden, lm_head, embed=embed,
                         tokens=mx.concatenate([first, guesses], axis=1))
    assert mx.allclose(free, forced, atol=1e-5)
    other = mx.concatenate([first, (guesses + 1) % 128], axis=1)
    assert not mx.allclose(free[1:], model.heads(hidden, lm_head, embed=embed,
                                                 tokens=other)[1:])


def test_teacher_tokens_are_the_next_token_then_earlier_heads_targets():
    next_tokens = np.array([5, 6, 7])
    labels = np.array([[6, 7], [7, IGNORE], [IGNORE, IGNORE]])
    assert teacher_tokens(next_tokens, labels).tolist() == [[5, 6, 7], [6, 7, 0], [7, 0, 0]]


def test_training_sequential_heads_lowers_loss_and_beats_plain_heads(backbone, features):
    _, lm_head = split_backbone(backbone)
    embed = token_embedding(backbone)
    results = {}
    for sequential in (False, True):
        config = TrainConfig(num_heads=2, steps=120, batch_size=64, learning_rate=3e-3,
                             warmup_steps=5, sequential=sequential)
        heads = fresh_heads(lm_head, 64, 128, config)
        history = train(heads, lm_head, features, config, show_progress=False, embed=embed)
        assert history[-1].loss < history[0].loss
        results[sequential] = head_accuracy(heads, lm_head, features, embed=embed)["top1"]
    # Knowing token t+1 makes guessing t+2 easier: head 0 must do better with it.
    assert results[True][0] > results[False][0]


def test_training_sequential_heads_needs_the_embedding(backbone, features):
    _, lm_head = split_backbone(backbone)
    config = TrainConfig(num_heads=2, steps=2, sequential=True)
    heads = fresh_heads(lm_head, 64, 128, config)
    with pytest.raises(ValueError, match="embed"):
        train(heads, lm_head, features, config, show_progress=False)
    x = mx.zeros((2, 64))
    with pytest.raises(ValueError, match="tokens"):
        medusa_loss(heads, lm_head, x, mx.array([[1, 2], [3, 4]]))


def test_save_load_round_trip_and_vllm_export_refused(backbone, tmp_path, capsys):
    model = attach_heads(backbone, num_heads=2, sequential=True, seed=4)
    save_heads(tmp_path / "heads", model.heads)
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["sequential_heads"] is True
    loaded = medusa_model(backbone, load_heads(tmp_path / "heads"))
    hidden = mx.ones((64,))
    assert mx.array_equal(loaded.head_logits(hidden, 2, mx.array(7)),
                          model.head_logits(hidden, 2, mx.array(7)))
    with pytest.raises(SystemExit) as done:
        convert_main([str(tmp_path / "heads"), "-o", str(tmp_path / "v"), "--to", "vllm"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no vLLM equivalent" in err and err.count("\n") == 1
    assert not (tmp_path / "v").exists()


def test_head_vocab_guesses_are_mapped_back_to_token_ids():
    """With a head vocabulary the projection scores vocabulary slots; the guess a
    sequential head passes on must be the token id, not the slot."""
    from medusa_mlx.draft import heads_topk
    from medusa_mlx.heads import HeadsArgs, init_heads

    backbone = tiny_model("qwen2", seed=1)
    vocab = list(range(1, 128, 3))
    args = HeadsArgs(64, 128, num_heads=3, shared_lm_head=True, sequential=True,
                     extra={"head_vocab": vocab})
    model = medusa_model(backbone, init_heads(args, seed=2))
    hidden = model.forward(mx.array([PROMPT]), None)[0][0, -1]
    full = model.heads(hidden, model.output_path, 3, embed=model.embed, tokens=mx.array([4]))
    guesses = [4] + [vocab[int(mx.argmax(full[k][mx.array(vocab)]))] for k in range(2)]
    forced = model.heads(hidden, model.output_path, 3, embed=model.embed, tokens=mx.array(guesses))
    assert np.allclose(np.array(model.head_logits(hidden, 3, mx.array(4))),
                       np.array(forced)[:, vocab], atol=1e-5)
    assert set(np.array(heads_topk(model, hidden, 3, 5, 4)).ravel().tolist()) <= set(vocab)
    assert medusa_tokens(model, PROMPT, 120, tree="tree-16") == plain_greedy(backbone, PROMPT, 120)


def test_keep_heads_leaves_the_kept_heads_unchanged():
    from medusa_mlx.heads import keep_heads

    model = attach_heads(tiny_model("llama", seed=1), num_heads=4, sequential=True, seed=3)
    hidden = mx.ones((64,))
    before = model.head_logits(hidden, 4, mx.array(9))
    keep_heads(model.heads, 3)
    assert model.num_heads == 3 and model.heads.args.to_config()["medusa_num_heads"] == 3
    assert mx.array_equal(model.head_logits(hidden, None, mx.array(9)), before[:3])
    with pytest.raises(ValueError, match="keep 1 to 3"):
        keep_heads(model.heads, 4)


def test_ranks_with_a_head_vocabulary_score_what_decoding_can_propose(backbone, features):
    """With a head vocabulary, a label outside it can never be proposed (rank =
    the cap); inside it, its rank is among the vocabulary's tokens only, and the
    heads pass each other token ids, not vocabulary slots."""
    from medusa_mlx.training.evaluate import head_ranks
    from medusa_mlx.heads import HeadsArgs, init_heads

    vocab = np.arange(0, 128, 2)
    args = HeadsArgs(64, 128, num_heads=2, shared_lm_head=True, sequential=True,
                     extra={"head_vocab": vocab.tolist()})
    model = medusa_model(backbone, init_heads(args, seed=6))
    rank = head_ranks(model.heads, model.head_projection, features, embed=model.embed,
                      vocab=vocab)
    labels = features.labels[:, :2].T
    outside = (labels != IGNORE) & (labels % 2 == 1)
    assert outside.any() and (rank[outside] == 10).all()
    # Inside: the label's rank among the logits decoding computes (model.head_logits).
    checked = 0
    for t in np.nonzero((labels[0] != IGNORE) & (labels[0] % 2 == 0))[0][:30]:
        logits = np.array(model.head_logits(mx.array(features.hidden[t]).astype(mx.float32), 2,
                                            mx.array(int(features.next_tokens[t]))))
        for k in range(2):
            if labels[k, t] != IGNORE and labels[k, t] % 2 == 0:
                slot = labels[k, t] // 2
                assert rank[k, t] == min((logits[k] > logits[k, slot]).sum(), 10)
                checked += k
    assert checked > 5  # head 1 (which sees head 0's guess) was checked too
