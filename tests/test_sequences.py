"""The backbone features both trainers read (``training/sequences.py``): cached
in content-keyed parts, so a cut run resumes, a new answer file costs only its
own positions, and the Medusa and context trainers share one backbone pass."""

import numpy as np
import pytest

from medusa_mlx.training import sequences as ts
from medusa_mlx.training.data import TokenSequence, answer_dataset, compute_features, head_labels
from medusa_mlx.training.prompt_sets import AnswerStore, is_held_out
from tiny_models import greedy_sequences, tiny_model


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("llama")


def answer_rows(backbone, n, tag, seed):
    ids = [i for i in (f"{tag}-{k}" for k in range(400)) if not is_held_out(i)][:n]
    held = [i for i in (f"{tag}-{k}" for k in range(400)) if is_held_out(i)][:2]
    rows = []
    for rid, s in zip(ids + held, greedy_sequences(backbone, n + 2, new_tokens=12, seed=seed)):
        rows.append({"id": rid, "prompt_ids": s.tokens[:s.start + 1],
                     "answer_ids": s.tokens[s.start + 1:], "finish": "length"})
    return rows


class CountingFeatures:
    """Counts the sequences the backbone is run over."""

    def __init__(self, monkeypatch):
        self.sequences = 0
        real = ts.sequence_features

        def counting(model, sequences, *args, **kwargs):
            self.sequences += len(sequences)
            return real(model, sequences, *args, **kwargs)

        monkeypatch.setattr(ts, "sequence_features", counting)


def test_parts_are_cached_per_file_and_reused_when_files_are_added(backbone, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(ts, "PART_ROWS", 3)
    store = AnswerStore(tmp_path / "store")
    first = store.write_chunk("magpie", answer_rows(backbone, 7, "magpie", 0))
    counter = CountingFeatures(monkeypatch)
    cache = tmp_path / "cache"
    one = ts.answer_sequence_features(backbone, "tiny", [first], 64, cache, held_out=False,
                                      log=lambda m: None)
    assert counter.sequences == 7 and len(one) == 7
    assert len(list(cache.glob("sequences-*.npz"))) == 3  # parts of 3, 3 and 1 sequences
    # A second file: the first file's parts come from the cache, only the new ones run.
    second = store.write_chunk("oasst", answer_rows(backbone, 5, "oasst", 1))
    both = ts.answer_sequence_features(backbone, "tiny", [first, second], 64, cache,
                                       held_out=False, log=lambda m: None)
    assert counter.sequences == 7 + 5 and len(both) == 12
    np.testing.assert_array_equal(both.hidden[: one.offsets[-1]], one.hidden)
    # A run cut after some parts keeps them: drop one part, only its sequences run again.
    sorted(cache.glob("sequences-*.npz"))[0].unlink()
    again = ts.answer_sequence_features(backbone, "tiny", [first, second], 64, cache,
                                        held_out=False, log=lambda m: None)
    assert counter.sequences in (12 + 1, 12 + 2, 12 + 3)
    np.testing.assert_array_equal(again.hidden, both.hidden)
    np.testing.assert_array_equal(again.offsets, both.offsets)
    assert not list(cache.glob("*.tmp*"))


def test_concatenated_parts_equal_one_pass(backbone):
    rows = [(s.tokens, s.start) for s in greedy_sequences(backbone, 5, new_tokens=10, seed=3)]
    whole = ts.sequence_features(backbone, rows)
    joined = ts.SequenceFeatures.concat([ts.sequence_features(backbone, rows[:2]),
                                         ts.sequence_features(backbone, rows[2:])])
    for name in ("tokens", "predicted", "offsets", "starts"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))
    np.testing.assert_allclose(joined.hidden.astype(np.float32), whole.hidden.astype(np.float32),
                               atol=1e-2)
    assert joined.positions == whole.positions == sum(len(t) - 1 - s for t, s in rows)


def test_medusa_positions_come_from_the_same_features(backbone, tmp_path, monkeypatch):
    """``answer_dataset`` (Medusa heads) reads the parts the context drafter's
    features were cached in: no second backbone pass; labels are z[t+2+k]."""
    store = AnswerStore(tmp_path / "store")
    rows = answer_rows(backbone, 6, "self_instruct", 4)
    store.write_chunk("self_instruct", rows)
    cache = tmp_path / "cache"
    for held in (False, True):
        ts.answer_sequence_features(backbone, "tiny", sorted((tmp_path / "store").glob("*.gz")),
                                    64, cache, held_out=held, log=lambda m: None)
    counter = CountingFeatures(monkeypatch)
    data = answer_dataset(backbone, "tiny", [tmp_path / "store"], 64, cache, log=lambda m: None)
    assert counter.sequences == 0
    train = [r for r in rows if not is_held_out(r["id"])]
    assert len(data.train) == sum(len(r["answer_ids"]) + 1 for r in train)
    assert data.held_out is not None and len(data.held_out) > 0
    expected = compute_features(backbone, [TokenSequence(r["prompt_ids"] + r["answer_ids"],
                                                         len(r["prompt_ids"]) - 1)
                                           for r in sorted(train, key=lambda r: len(
                                               r["prompt_ids"]) + len(r["answer_ids"]))])
    got = sorted(map(tuple, data.train.labels.tolist()))
    assert got == sorted(map(tuple, expected.labels.tolist()))
    # Self-distilled text: the base model's argmax is the text itself, so labels are x[t+2+k].
    r = train[0]
    tokens = r["prompt_ids"] + r["answer_ids"]
    start = len(r["prompt_ids"]) - 1
    np.testing.assert_array_equal(head_labels(tokens, start)[:, :2],
                                  compute_features(backbone, [TokenSequence(tokens, start)])
                                  .labels[:, :2])
