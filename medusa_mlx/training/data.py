"""Training data for Medusa heads: token sequences -> (hidden state, labels) pairs.

The backbone is frozen, so everything the heads need is computed once:

1. records (plain-text documents or chat prompts) -> token sequences. Chat
   prompts are answered by the base model itself through its chat template
   (self-distillation); text documents are either used as they are (teacher
   forcing) or cut to a short prefix that the base model continues.
2. sequences -> features: the final hidden state ``h_t`` at every position plus
   ``labels[t, k]``, the token head k must guess from ``h_t``.

Labels come from the base model's own greedy predictions, because Medusa's
greedy acceptance compares a head's guess with the base argmax: with
``z[j] = argmax p(. | x_0 .. x_{j-1})`` (the token the base model would put at
position j), head k's label at position t is ``z[t + 2 + k]``. On text the base
model generated itself ``z[j] == x[j]``.

Both steps are cached on disk, keyed by the model, the data files and the options.
"""

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from .answers import AnswerCache, generate_batched
from .prompt_sets import answer_files
from .sequences import SequenceFeatures, answer_sequence_features, sequence_features
from ..conversation import encode_prompt

MAX_LABEL_HEADS = 8  # label columns stored per position (heads trained <= this)
IGNORE = -1  # label of positions whose target lies past the sequence end


@dataclass
class Record:
    """One training example: a plain text, or a chat whose answer the base model writes."""

    text: Optional[str] = None
    messages: Optional[list] = None


@dataclass
class DataConfig:
    files: list
    mode: str = "auto"  # "generate", "text", or "auto" (chats: generate; text: generate)
    held_out: float = 0.1  # fraction of records kept out of training
    prompt_tokens: int = 16  # text -> prompt of this many tokens (generate mode)
    max_new_tokens: int = 256
    max_seq_len: int = 512
    max_records: Optional[int] = None
    batch_size: int = 32  # generation / feature batch
    seed: int = 0
    # Extra answers per training prompt, sampled at ``sample_temp``: more varied
    # text for the same prompts. Labels stay the base model's argmax at every
    # position, which is what greedy acceptance needs. Held-out answers stay greedy.
    samples_per_prompt: int = 0
    sample_temp: float = 0.7
    # Training-only files: all their records train. The held-out split comes from
    # ``files`` alone, so adding data never changes what is measured, and the
    # features of ``files`` are reused from their own cache.
    extra_files: list = field(default_factory=list)


@dataclass
class TokenSequence:
    tokens: list  # prompt + continuation
    start: int  # first position whose labels count (the last prompt token)


# ---------------------------------------------------------------------------
# records


def read_records(files) -> list[Record]:
    """``.jsonl``: one object per line with ``prompt``, ``messages`` or ``text``;
    any other file: plain text, documents separated by blank lines."""
    records = []
    for name in files:
        path = Path(name)
        if path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(_record_from_json(json.loads(line), path))
        else:
            docs = path.read_text().split("\n\n")
            records += [Record(text=d.strip()) for d in docs if d.strip()]
    return records


def _record_from_json(obj: dict, path: Path) -> Record:
    if "messages" in obj:
        messages = list(obj["messages"])
        # The base model writes the answer itself: drop a trailing reference answer.
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        return Record(messages=messages)
    if "prompt" in obj:
        return Record(messages=[{"role": "user", "content": obj["prompt"]}])
    if "text" in obj:
        return Record(text=obj["text"])
    raise ValueError(f"{path}: a line needs 'prompt', 'messages' or 'text': {obj}")


def split_records(records: list, held_out: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the last ``held_out`` fraction is the held-out split."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = int(round(len(records) * held_out))
    train = [records[i] for i in order[: len(order) - n_held]]
    held = [records[i] for i in order[len(order) - n_held :]]
    return train, held


def prompt_ids(tokenizer, record: Record, prompt_tokens: int) -> list[int]:
    """The tokens the base model continues from."""
    if record.messages is not None:
        return encode_prompt(tokenizer, record.messages)
    return text_ids(tokenizer, record.text)[:prompt_tokens]


def text_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


# ---------------------------------------------------------------------------
# sequences


def sample_variant(temp: float, index: int) -> str:
    """The answer cache's name for the ``index``-th answer sampled at ``temp``."""
    return f"temp={temp}#{index}"


def answer_cache_path(cache_root, model_spec: str) -> Path:
    """One answers file per base model, shared by every data configuration."""
    model_key = hashlib.sha256(str(model_spec).encode()).hexdigest()[:16]
    return Path(cache_root) / f"answers-{model_key}.jsonl"


def build_sequences(model, tokenizer, records: list, config: DataConfig,
                    progress=None, answers: Optional[AnswerCache] = None,
                    sample: Optional[int] = None) -> list[TokenSequence]:
    """The base model's answer to every record: greedy, or with ``sample=i`` the
    i-th answer sampled at ``config.sample_temp`` (cached apart from the others)."""
    mode = config.mode
    if mode == "text" and sample is not None:
        raise ValueError("--samples-per-prompt needs answers the model writes (--mode generate)")
    if mode == "text":
        sequences = []
        for r in records:
            if r.text is None:
                raise ValueError("mode 'text' needs plain-text records, not chats")
            ids = text_ids(tokenizer, r.text)[: config.max_seq_len]
            sequences.append(TokenSequence(ids, 0))
        return sequences
    if mode not in ("generate", "auto"):
        raise ValueError(f"unknown data mode {mode!r}")
    prompts = [prompt_ids(tokenizer, r, config.prompt_tokens) for r in records]
    budget = [max(1, min(config.max_new_tokens, config.max_seq_len - len(p))) for p in prompts]
    continuations: list = [None] * len(prompts)
    variant, sampler = "", None
    if sample is not None:
        from mlx_lm.sample_utils import make_sampler

        variant = sample_variant(config.sample_temp, sample)
        sampler = make_sampler(config.sample_temp)
        mx.random.seed(config.seed * 1000 + sample)
    if answers is not None:
        for i, (p, b) in enumerate(zip(prompts, budget)):
            continuations[i] = answers.get(p, b, variant)
            if continuations[i] is not None and progress is not None:
                progress()
    # Similar budgets batch together; one generate call per budget keeps it simple.
    for limit in sorted(set(budget)):
        idx = [i for i, b in enumerate(budget) if b == limit and continuations[i] is None]
        if not idx:
            continue

        def done(j, tokens, idx=idx, limit=limit):
            if answers is not None:
                answers.put(prompts[idx[j]], limit, tokens, variant)
            if progress is not None:
                progress()

        outs = generate_batched(model, [prompts[i] for i in idx], limit,
                                tokenizer.eos_token_ids, config.batch_size, done, sampler)
        for i, o in zip(idx, outs):
            continuations[i] = o
    return [TokenSequence(p + c, len(p) - 1) for p, c in zip(prompts, continuations)]


# ---------------------------------------------------------------------------
# features


@dataclass
class Features:
    """Per-position training pairs, all sequences concatenated."""

    hidden: np.ndarray  # (N, H) float16: final-norm hidden states h_t
    labels: np.ndarray  # (N, MAX_LABEL_HEADS) int32: head k's target, IGNORE if none
    # (N,) int32: z[t+1], the base model's token after position t (the decoding
    # step's bonus token), which sequential heads see first. None in old caches.
    next_tokens: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def concat(parts: list) -> "Features":
        nexts = [p.next_tokens for p in parts]
        return Features(np.concatenate([p.hidden for p in parts]),
                        np.concatenate([p.labels for p in parts]),
                        None if any(n is None for n in nexts) else np.concatenate(nexts))


def head_labels(targets: list, start: int, num_heads: int = MAX_LABEL_HEADS) -> np.ndarray:
    """``targets[j]`` is the token the base model puts at position j. Returns
    labels (T - start, num_heads) with ``labels[t - start, k] = targets[t + 2 + k]``."""
    T = len(targets)
    labels = np.full((T - start, num_heads), IGNORE, dtype=np.int32)
    for k in range(num_heads):
        src = np.arange(start, T) + 2 + k
        ok = src < T
        labels[ok, k] = np.asarray(targets, dtype=np.int32)[src[ok]]
    return labels


def teacher_tokens(next_tokens: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) z[t+1] and (N, >=K-1) labels z[t+2+k] -> (N, K) the true token each
    sequential head sees: z[t+1] for head 0, head k-1's target for head k. Past
    a sequence's end (no label) any token will do: that head's loss is masked too."""
    return np.concatenate([next_tokens[:, None], np.maximum(labels, 0)], axis=1)


def relabel(labels: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Token-id labels -> their slots in ``vocab`` (a head vocabulary, or the
    tokens a restricted loss scores); a label outside ``vocab`` becomes IGNORE,
    like a position without a label."""
    slots = np.full(max(int(vocab.max()), int(labels.max())) + 1, IGNORE, np.int32)
    slots[vocab] = np.arange(len(vocab), dtype=np.int32)
    return np.where(labels == IGNORE, IGNORE, slots[np.maximum(labels, 0)])


def compute_features(model, sequences: list, batch_size: int = 8,
                     progress=None) -> Features:
    """The frozen backbone once over every sequence; positions grouped by sequence,
    shortest first."""
    rows = [(s.tokens, s.start) for s in sorted(sequences, key=lambda s: len(s.tokens))]
    return position_features(sequence_features(model, rows, batch_size, progress))


def position_features(data: SequenceFeatures) -> Features:
    """Whole-sequence features -> the per-position pairs Medusa heads train on:
    each answer position's hidden state, its head labels and z[t+1]."""
    hidden_parts, label_parts, next_parts = [], [], []
    for i, start in enumerate(data.starts.tolist()):
        o, end = int(data.offsets[i]), int(data.offsets[i + 1])
        T = end - o
        # z[0] = x[0]; z[j] = the base model's prediction for position j.
        targets = np.concatenate([data.tokens[o: o + 1], data.predicted[o: end]])  # z[0 .. T]
        hidden_parts.append(data.hidden[o + start: end])
        label_parts.append(head_labels(targets[:T], start))
        next_parts.append(targets[start + 1: T + 1].astype(np.int32))
    return Features(np.concatenate(hidden_parts), np.concatenate(label_parts),
                    np.concatenate(next_parts))


def answer_dataset(model, model_spec: str, paths, max_seq_len: int, cache_root, log=print):
    """Training and held-out positions of answer stores (split by prompt id),
    from the cached sequence features the context drafter also reads."""
    files = answer_files(paths)
    splits = [answer_sequence_features(model, model_spec, files, max_seq_len, cache_root,
                                       held_out=held, log=log) for held in (False, True)]
    train, held = [position_features(d) if d is not None else None for d in splits]
    log(f"answers: {len(train) if train else 0} training positions, "
        f"{len(held) if held else 0} held out")
    return Dataset(train, held, [], Path(cache_root))


# ---------------------------------------------------------------------------
# cache


def cache_key(model_spec: str, config: DataConfig) -> str:
    digest = hashlib.sha256()
    digest.update(str(model_spec).encode())
    fields = asdict(config)
    fields.pop("batch_size")  # does not change the data
    if not config.samples_per_prompt:  # keys made before sampled answers existed stay valid
        fields.pop("samples_per_prompt")
        fields.pop("sample_temp")
    if not config.extra_files:  # likewise for keys made before extra files existed
        fields.pop("extra_files")
    fields["files"] = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in config.files]
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def save_sequences(path: Path, sequences: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"tokens": s.tokens, "start": s.start} for s in sequences]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def load_sequences(path: Path) -> list:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [TokenSequence(r["tokens"], r["start"]) for r in rows]


def save_features(path: Path, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"hidden": features.hidden, "labels": features.labels}
    if features.next_tokens is not None:
        arrays["next_tokens"] = features.next_tokens
    np.savez(path, **arrays)


def load_features(path: Path) -> Features:
    with np.load(path) as f:
        return Features(f["hidden"], f["labels"], f["next_tokens"] if "next_tokens" in f else None)


@dataclass
class Dataset:
    train: Features
    held_out: Optional[Features]  # None when no record is held out
    held_out_prompts: list  # token ids of held-out prompts (for acceptance tests)
    cache_dir: Path


def prepare(model, tokenizer, model_spec: str, config: DataConfig, cache_root,
            log=print) -> Dataset:
    """Sequences and features for both splits, from the cache when present."""
    if config.extra_files:
        base = prepare(model, tokenizer, model_spec, replace(config, extra_files=[]),
                       cache_root, log)
        extra = prepare(model, tokenizer, model_spec,
                        replace(config, files=list(config.extra_files), extra_files=[],
                                held_out=0.0, max_records=None), cache_root, log)
        return Dataset(Features.concat([base.train, extra.train]), base.held_out,
                       base.held_out_prompts, base.cache_dir)
    records = read_records(config.files)
    if config.max_records is not None:
        records = records[: config.max_records]
    train_records, held_records = split_records(records, config.held_out, config.seed)
    cache_dir = Path(cache_root) / cache_key(model_spec, config)
    held_prompts = [prompt_ids(tokenizer, r, config.prompt_tokens) for r in held_records]
    answers = AnswerCache(answer_cache_path(cache_root, model_spec))
    features = {}
    for split, split_records_ in (("train", train_records), ("held_out", held_records)):
        if not split_records_:  # an extra-files run has no held-out split of its own
            features[split] = None
            continue
        feat_path = cache_dir / f"features-{split}.npz"
        seq_path = cache_dir / f"sequences-{split}.jsonl"
        cached = load_features(feat_path) if feat_path.exists() else None
        if cached is not None and cached.next_tokens is not None:  # older caches lack them
            features[split] = cached
            log(f"{split}: {len(cached)} positions from cache {feat_path}")
            continue
        if seq_path.exists():
            sequences = load_sequences(seq_path)
            log(f"{split}: {len(sequences)} sequences from cache {seq_path}")
        else:
            samples = config.samples_per_prompt if split == "train" else 0
            sequences = _with_progress(
                f"{split}: base model answers", len(split_records_) * (1 + samples),
                lambda p: [s for i in [None, *range(samples)]
                           for s in build_sequences(model, tokenizer, split_records_, config,
                                                    progress=lambda: p(1), answers=answers,
                                                    sample=i)],
            )
            save_sequences(seq_path, sequences)
        features[split] = _with_progress(
            f"{split}: hidden states", len(sequences),
            lambda p: compute_features(model, sequences, progress=p),
        )
        save_features(feat_path, features[split])
        log(f"{split}: {len(sequences)} sequences, {len(features[split])} positions -> {feat_path}")
    return Dataset(features["train"], features["held_out"], held_prompts, cache_dir)


def _with_progress(description: str, total: int, work):
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        return work(lambda n: bar.advance(task, n))
