"""Quick head-training pilots on a subset of a SmolLM2 training cache (the README's
"500-chat pilot" figures). Not part of the library: a record of how they were made.

    python scripts/pilot_heads.py --cache out/cache/<key> --variant hard|soft|two-blocks

<key> is the folder `scripts/train_shipped_heads.sh smollm2` fills (features-*.npz and
sequences-*.jsonl holding labelled positions only, as written before whole-sequence
features). Trains 4 sequential heads on --chats random training chats for --steps steps
of 1024 random positions (lr 1e-3, 20 warm-up steps, cosine), then prints held-out
top-1 / top-5 with each head fed its predecessor's own guess.
--sampled adds one answer per picked chat sampled at temperature 0.7 (generated, or read
from the training answer cache under the key `train --samples-per-prompt` uses).
  hard        the shipped recipe (cross-entropy against the base model's greedy tokens)
  soft        cross-entropy against the base model's whole distribution at that position
  two-blocks  two residual blocks per head
"""

import argparse
import time
from pathlib import Path

import medusa_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from medusa_mlx.backbone import split_backbone, token_embedding
from medusa_mlx.load import load_backbone
from medusa_mlx.training.data import (IGNORE, AnswerCache, Features, TokenSequence,
                                      answer_cache_path, compute_features, generate_batched,
                                      load_features, load_sequences, sample_variant,
                                      teacher_tokens)
from medusa_mlx.training.evaluate import head_accuracy
from medusa_mlx.training.trainer import (TrainConfig, fresh_heads, make_optimizer,
                                         medusa_loss, restrict_vocab)

K, HIDDEN, VOCAB, BATCH = 4, 576, 49152, 1024


def sequence_offsets(cache: Path, split: str) -> np.ndarray:
    """Boundaries of each sequence's labelled positions (features are stored shortest first)."""
    seqs = load_sequences(cache / f"sequences-{split}.jsonl")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].tokens))
    return np.concatenate([[0], np.cumsum([len(seqs[i].tokens) - seqs[i].start for i in order])])


def with_sampled_answers(backbone, tokenizer, cache, train, positions, picked):
    """``train`` restricted to ``positions`` plus one sampled answer per picked chat."""
    from mlx_lm.sample_utils import make_sampler

    seqs = load_sequences(cache / "sequences-train.jsonl")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].tokens))
    prompts = [seqs[order[i]].tokens[: seqs[order[i]].start + 1] for i in picked]
    answers = AnswerCache(answer_cache_path(cache.parent, "smollm2"))
    variant, limit = sample_variant(0.7, 0), 192  # what train --samples-per-prompt 1 caches
    missing = [p for p in prompts if answers.get(p, limit, variant) is None]
    if missing:
        mx.random.seed(0)
        generate_batched(backbone, missing, limit, tokenizer.eos_token_ids, 128,
                         lambda j, t: answers.put(missing[j], limit, t, variant),
                         make_sampler(0.7))
    sampled = [TokenSequence(p + answers.get(p, limit, variant), len(p) - 1) for p in prompts]
    extra = compute_features(backbone, sampled)
    print(f"sampled answers: {len(sampled)} chats, {len(extra)} positions", flush=True)
    kept = Features(train.hidden[positions], train.labels[positions],
                    train.next_tokens[positions])
    pool = Features.concat([kept, extra])
    return pool, np.arange(len(pool))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--variant", choices=["hard", "soft", "two-blocks"], default="hard")
    p.add_argument("--chats", type=int, default=500)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sampled", action="store_true")
    args = p.parse_args()

    train = load_features(args.cache / "features-train.npz")
    held_out = load_features(args.cache / "features-held_out.npz")
    offsets = sequence_offsets(args.cache, "train")
    picked = np.sort(np.random.default_rng(0).choice(len(offsets) - 1, args.chats, replace=False))
    positions = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in picked])

    backbone, tokenizer, _ = load_backbone("smollm2")
    _, lm_head = split_backbone(backbone)
    embed = token_embedding(backbone)
    if args.sampled:
        train, positions = with_sampled_answers(backbone, tokenizer, args.cache, train, positions,
                                                picked)
    config = TrainConfig(num_heads=K, num_layers=2 if args.variant == "two-blocks" else 1,
                         shared_lm_head=True, sequential=True, steps=args.steps,
                         learning_rate=1e-3, warmup_steps=20)
    heads = fresh_heads(lm_head, HIDDEN, VOCAB, config)

    labels = train.labels[:, :K]
    tokens = teacher_tokens(train.next_tokens, labels[:, : K - 1])
    # Softmax over the pilot's label tokens; only positions the pilot draws keep a label.
    project, picked_labels = restrict_vocab(lm_head, labels[positions], heads.args)
    labels = np.full_like(labels, IGNORE)
    labels[positions] = picked_labels

    def soft_loss(h, x, y, t, teacher_hidden):
        # Head k's teacher: the base model's distribution at position t+1+k (argmax = label).
        logits = h(x, project, embed=embed, tokens=t)
        total, correct, counts = mx.array(0.0), [], []
        for k in range(K):
            valid = y[:, k] != IGNORE
            target = mx.softmax(project(teacher_hidden[k]), axis=-1)
            ce = -(target * nn.log_softmax(logits[k], axis=-1)).sum(-1) * valid
            total = total + 0.8**k * ce.sum() / mx.maximum(valid.sum(), 1)
            hit = mx.argmax(logits[k], -1) == mx.where(valid, y[:, k], 0)
            correct.append((hit * valid).sum())
            counts.append(valid.sum())
        return total, (mx.stack(correct), mx.stack(counts))

    def hard_loss(h, x, y, t, _):
        return medusa_loss(h, project, x, y, 0.8, embed, t)

    loss_and_grad = nn.value_and_grad(heads, soft_loss if args.variant == "soft" else hard_loss)
    optimizer = make_optimizer(config)
    tic = time.time()
    for step in range(args.steps):
        idx = np.random.default_rng([0, step]).choice(positions, BATCH, replace=False)
        x = mx.array(train.hidden[idx]).astype(mx.float32)
        teacher = None
        if args.variant == "soft":
            rows = [np.minimum(idx + 1 + k, len(train) - 1) for k in range(K)]
            teacher = mx.array(np.stack([train.hidden[r] for r in rows])).astype(mx.float32)
        (loss, (c, n)), grads = loss_and_grad(heads, x, mx.array(labels[idx]),
                                              mx.array(tokens[idx]), teacher)
        optimizer.update(heads, grads)
        mx.eval(heads.parameters(), optimizer.state, loss)
        if (step + 1) % 50 == 0:
            acc = np.array(c) / np.maximum(np.array(n), 1)
            print(step + 1, round(loss.item(), 3), acc.round(3), f"{time.time() - tic:.0f}s",
                  flush=True)
    acc = head_accuracy(heads, lm_head, held_out, embed=embed)
    print(f"{args.variant}: {len(positions)} positions, held-out top-1 {acc['top1']} "
          f"top-5 {acc['top5']}")


if __name__ == "__main__":
    main()
