"""The frozen backbone's features over whole token sequences, computed once and
cached on disk in small content-keyed parts.

Both head kinds train from these: Medusa heads take each answer position's
final hidden state and the base model's own next tokens
(``data.position_features``); the context drafter reads whole sequences
(``context.window_batch``). One backbone pass therefore serves both.

Running the backbone is the slow part (SmolLM2-135M float32 on 2 CPU cores,
OpenBLAS: ~220 positions/s, so ~2 h for the 1.55M positions, prompts
included, of the ~6,700 training answers in session 8). The answers are cached
in parts of at most ``PART_ROWS`` sequences, each keyed by the model and the
exact tokens it holds: an interrupted run keeps every finished part, and new
answer chunks only cost their own positions.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from ..backbone import find_body, hidden_and_logits
from .prompt_sets import read_answers, training_rows

PART_ROWS = 256  # sequences per cached part: ~2-4 min of backbone time each here


@dataclass
class SequenceFeatures:
    """Every sequence's backbone features, concatenated; sequence i is rows
    ``offsets[i]:offsets[i+1]``, its answer labels start at ``starts[i]``."""

    hidden: np.ndarray  # (N, H) float16: final-norm hidden states
    tokens: np.ndarray  # (N,) int32
    predicted: np.ndarray  # (N,) int32: the base model's argmax after each position
    offsets: np.ndarray  # (S + 1,) int64
    starts: np.ndarray  # (S,) int32

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def positions(self) -> int:
        """Positions trained on (answer positions with a next feature)."""
        lengths = np.diff(self.offsets)
        return int(np.maximum(lengths - 1 - self.starts, 0).sum())

    @staticmethod
    def concat(parts: list) -> "SequenceFeatures":
        ends = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + e for p, e in zip(parts, ends)]
        return SequenceFeatures(np.concatenate([p.hidden for p in parts]),
                                np.concatenate([p.tokens for p in parts]),
                                np.concatenate([p.predicted for p in parts]),
                                np.concatenate(offsets).astype(np.int64),
                                np.concatenate([p.starts for p in parts]))


def sequence_features(model, sequences: list, batch_size: int = 8,
                      progress=None) -> SequenceFeatures:
    """Features of ``(tokens, start)`` sequences, in their order. One backbone
    call per batch, shortest first (right padding never changes earlier
    positions of a causal model; similar lengths waste little on padding)."""
    body = find_body(model)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    parts: dict = {}
    for b in range(0, len(order), batch_size):
        batch = order[b: b + batch_size]
        width = max(len(sequences[i][0]) for i in batch)
        ids = np.zeros((len(batch), width), dtype=np.int32)
        for r, i in enumerate(batch):
            ids[r, : len(sequences[i][0])] = sequences[i][0]
        hidden, logits = hidden_and_logits(model, body, mx.array(ids))
        predicted = mx.argmax(logits, axis=-1)
        mx.eval(hidden, predicted)
        hidden, predicted = np.array(hidden.astype(mx.float16)), np.array(predicted)
        for r, i in enumerate(batch):
            T = len(sequences[i][0])
            parts[i] = (hidden[r, :T], ids[r, :T], predicted[r, :T].astype(np.int32))
        if progress is not None:
            progress(len(batch))
    lengths = [len(s[0]) for s in sequences]
    return SequenceFeatures(np.concatenate([parts[i][0] for i in range(len(sequences))]),
                            np.concatenate([parts[i][1] for i in range(len(sequences))]),
                            np.concatenate([parts[i][2] for i in range(len(sequences))]),
                            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                            np.array([s[1] for s in sequences], dtype=np.int32))


def save_sequence_features(path: Path, data: SequenceFeatures) -> None:
    """Written to a temporary name, then renamed: a cut run never leaves half a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, hidden=data.hidden, tokens=data.tokens, predicted=data.predicted,
             offsets=data.offsets, starts=data.starts)
    tmp.replace(path)


def load_sequence_features(path: Path) -> SequenceFeatures:
    with np.load(path) as f:
        return SequenceFeatures(f["hidden"], f["tokens"], f["predicted"], f["offsets"],
                                f["starts"])


def sequences_key(model_spec: str, sequences: list) -> str:
    """The model and the exact tokens: equal keys mean equal features."""
    digest = hashlib.sha256(str(model_spec).encode())
    for tokens, start in sequences:
        digest.update(np.asarray([len(tokens), start], np.int64).tobytes())
        digest.update(np.asarray(tokens, np.int64).tobytes())
    return digest.hexdigest()[:16]


def cached_sequence_features(model, model_spec: str, groups: list, cache_root,
                             log=print) -> Optional[SequenceFeatures]:
    """``sequence_features`` of every sequence in ``groups`` (lists of
    ``(tokens, start)``, e.g. one per answer file), in order. Each group is cut
    into parts of ``PART_ROWS`` that are cached under ``cache_root`` as they
    finish; cutting per group keeps a new file from moving the others' parts."""
    parts = []
    total = sum(len(g) for g in groups)
    done = 0
    for sequences in groups:
        for p in range(0, len(sequences), PART_ROWS):
            chunk = sequences[p: p + PART_ROWS]
            done += len(chunk)
            path = Path(cache_root) / f"sequences-{sequences_key(model_spec, chunk)}.npz"
            if path.exists():
                parts.append(load_sequence_features(path))
                continue
            parts.append(sequence_features(model, chunk))
            save_sequence_features(path, parts[-1])
            log(f"features: {done}/{total} sequences ({parts[-1].offsets[-1]} positions "
                f"in this part) -> {path}")
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else SequenceFeatures.concat(parts)


def answer_sequences(files: list, max_seq_len: int, held_out: bool,
                     max_sequences: Optional[int] = None) -> list:
    """``(tokens, start)`` of the answers in ``files`` (training or held-out
    split, ``prompt_sets.training_rows``), one list per file; with
    ``max_sequences``, a fixed random choice of that many in all."""
    seen: set = set()
    groups = [list(training_rows(read_answers([f]), max_seq_len, held_out, seen))
              for f in files]
    total = sum(len(g) for g in groups)
    if max_sequences is not None and total > max_sequences:
        keep = set(np.random.default_rng(0).choice(total, max_sequences, replace=False).tolist())
        first = np.cumsum([0] + [len(g) for g in groups])
        groups = [[row for j, row in enumerate(g) if first[i] + j in keep]
                  for i, g in enumerate(groups)]
    return groups


def answer_sequence_features(model, model_spec: str, files: list, max_seq_len: int,
                             cache_root, held_out: bool, max_sequences: Optional[int] = None,
                             log=print) -> Optional[SequenceFeatures]:
    """Cached features of the answers in ``files``: what both trainers read."""
    groups = answer_sequences(files, max_seq_len, held_out, max_sequences)
    return cached_sequence_features(model, model_spec, groups, cache_root, log)
