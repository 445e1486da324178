"""Train a context drafter (``medusa_mlx/context.py``) on self-distilled text.

    python -m medusa_mlx.train --kind context --model smollm2 \\
        --answers data/distilled/smollm2 --out drafters/smollm2

Unlike Medusa heads, the drafter attends over the text, so its training data
is whole sequences, not independent positions: the backbone runs once over
every answer (prompt included) and its features, tokens and own argmax
predictions are cached per sequence (``sequences.py``, shared with the Medusa
trainer). The loop then never runs the backbone.

Loss (EAGLE-1): the drafter reads [f_t ; e(x_{t+1})] causally and outputs g_t;
``feature_weight`` x smooth-L1(g_t, f_{t+1}) + ``token_weight`` x cross-entropy
of the backbone's output projection on g_t (over the head vocabulary) against
the base model's own next token after x_{t+1}. Only positions the drafter
drafts from at decoding count (the answer: t >= the last prompt position).
With ``unroll`` > 1, training-time test (EAGLE-3): pass k feeds the drafter
its own pass-(k-1) outputs as features, as deeper tree nodes see at decoding.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from ..context import ContextDrafter
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import relabel
from .sequences import SequenceFeatures

IGNORE = -1


# ---------------------------------------------------------------------------
# batches and loss


def window_batch(data: SequenceFeatures, rows: np.ndarray, window: int, rng) -> tuple:
    """(features, tokens, targets, mask) of shape (B, W) for sequences ``rows``:
    one window of up to ``window`` positions each, placed to cover answer
    positions (padding is masked out)."""
    B = len(rows)
    lengths = data.offsets[rows + 1] - data.offsets[rows]
    W = int(min(window, lengths.max()))
    H = data.hidden.shape[1]
    feats = np.zeros((B, W, H), np.float32)  # float16 matmuls are slow on a CPU
    tokens = np.zeros((B, W), np.int32)
    targets = np.full((B, W), IGNORE, np.int32)
    mask = np.zeros((B, W), bool)
    for r, i in enumerate(rows):
        T, start = int(lengths[r]), int(data.starts[i])
        low = max(0, min(start - W // 4, T - W))
        first = int(rng.integers(low, max(low, T - W) + 1))
        n = min(W, T - first)
        o = int(data.offsets[i]) + first
        feats[r, :n] = data.hidden[o: o + n]
        tokens[r, :n] = data.tokens[o: o + n]
        targets[r, :n] = data.predicted[o: o + n]
        t = np.arange(first, first + n)
        mask[r, :n] = t >= start
    return feats, tokens, targets, mask


def unroll_masks(width: int, passes: int) -> list:
    """Pass p's attention (p = 0 .. passes-1) over the keys of passes 0..p, each
    ``width`` long: its entry at t sees what a depth-(p+1) node at decoding
    sees, i.e. the true entries before t - p and one entry of each earlier pass
    on its own path (pass q's at t - p + q), its own included."""
    t = np.arange(width)[:, None]
    j = np.arange(width)[None, :]
    masks = []
    for p in range(passes):
        blocks = [j <= t - p] + [j == t - p + q for q in range(1, p + 1)]
        masks.append(mx.array(np.concatenate(blocks, axis=1)))
    return masks


def unrolled_outputs(drafter: ContextDrafter, embed: Callable, feats: mx.array,
                     tokens: mx.array, passes: int) -> list:
    """The drafter's outputs g at positions 0 .. W-2 for each pass: pass 0
    reads [f_t ; e(x_{t+1})]; pass p > 0 (training-time test) reads pass p-1's
    g at t-1 as the feature at t and attends as ``unroll_masks`` says, so its
    position t is what a depth-(p+1) tree node computes at decoding."""
    W = feats.shape[1] - 1
    nxt = embed(tokens[:, 1:])
    inputs = feats[:, :-1]
    masks = unroll_masks(W, passes)
    keys, values, outputs = [], [], []
    for p in range(passes):
        x, q, k, v = drafter.attention_inputs(inputs, nxt)
        keys.append(k)
        values.append(v)
        g = drafter.attend(x, q, mx.concatenate(keys, axis=2), mx.concatenate(values, axis=2),
                           masks[p])
        outputs.append(g)
        # The next pass's feature at t is this pass's estimate made at t - 1.
        inputs = mx.concatenate([mx.zeros_like(g[:, :1]), g[:, :-1]], axis=1).astype(feats.dtype)
    return outputs


def drafter_loss(drafter: ContextDrafter, weight: mx.array, embed: Callable, feats: mx.array,
                 tokens: mx.array, targets: mx.array, mask: mx.array, feature_weight: float,
                 token_weight: float, unroll: int = 1):
    """Position t (0 .. W-2) of every pass (``unrolled_outputs``): g_t compared
    with f_{t+1} and scored against the base model's token after x_{t+1}
    (``targets[t+1]``, a slot of the head vocabulary ``weight`` rows, IGNORE
    outside it). Returns (loss, [(top-1 correct, counted)] per pass)."""
    W = feats.shape[1] - 1
    true_next, labels = feats[:, 1:].astype(mx.float32), targets[:, 1:]
    total, stats = mx.array(0.0), []
    for p, g in enumerate(unrolled_outputs(drafter, embed, feats, tokens, unroll)):
        # Pass p's position t stands for a depth-(p+1) node: it needs p earlier positions.
        valid = mask[:, :-1] & (mx.arange(W) >= p)[None]
        counted = valid & (labels >= 0)
        diff = mx.abs(g.astype(mx.float32) - true_next)
        smooth = mx.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5).mean(axis=-1)
        logits = g @ weight.T
        ce = nn.losses.cross_entropy(logits, mx.maximum(labels, 0), reduction="none")
        total = total + (feature_weight * (smooth * valid).sum() / mx.maximum(valid.sum(), 1)
                         + token_weight * (ce * counted).sum()
                         / mx.maximum(counted.sum(), 1)) / unroll
        stats.append((((mx.argmax(logits, axis=-1) == labels) & counted).sum(), counted.sum()))
    return total, stats


def drafter_ranks(drafter: ContextDrafter, project: Callable, embed: Callable,
                  data: SequenceFeatures, vocab: Optional[np.ndarray], depth: int,
                  max_rank: int = 64) -> tuple:
    """What tree search needs (``training.tree_search.choose_tree``): rank
    (depth, N), the rank of the right token among the head vocabulary at each
    depth of a step drafted from answer position s, on the right path (true
    tokens, the drafter's own features, as at decoding), ``max_rank`` when
    absent or past the end; and each sequence's exclusive end in N.
    ``project``: features -> logits as decoding scores them, over ``vocab``
    (head vocabulary ids; None: the whole vocabulary).

    Depth d's node of the step at s predicts x_{s+1+d}: pass d-1 at s+d-1."""
    ranks, ends = [], []
    for i, start in enumerate(data.starts.tolist()):
        o, end = int(data.offsets[i]), int(data.offsets[i + 1])
        T = end - o
        if T - start < 2:
            continue
        feats = mx.array(data.hidden[o:end][None].astype(np.float32))
        tokens = mx.array(data.tokens[o:end][None])
        labels = data.predicted[o + 1: end]  # at t: the token after x_{t+1}
        if vocab is not None:  # head-vocabulary slots, IGNORE outside it
            labels = relabel(labels, vocab)
        rank = np.full((depth, T - start), max_rank, np.int64)
        for p, g in enumerate(unrolled_outputs(drafter, embed, feats, tokens, depth)):
            logits = project(g[0]).astype(mx.float32)
            right = mx.take_along_axis(logits, mx.array(np.maximum(labels, 0))[:, None], axis=1)
            above = np.array((logits > right).sum(axis=1))
            above = np.where(labels >= 0, np.minimum(above, max_rank), max_rank)
            s = np.arange(start, T)
            t = s + p  # the position whose pass-p output the step at s uses
            ok = t < T - 1
            rank[p, ok] = above[t[ok]]
        ranks.append(rank)
        ends.append(T - start)
    return np.concatenate(ranks, axis=1), np.cumsum(ends)


# ---------------------------------------------------------------------------
# training loop


@dataclass
class ContextTrainConfig:
    steps: int = 2000
    batch_size: int = 16  # windows per step
    window: int = 256  # positions per window
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    feature_weight: float = 1.0  # EAGLE: smooth-L1 on features ...
    token_weight: float = 0.1  # ... plus 0.1 x token cross-entropy
    unroll: int = 1  # training-time test passes (1: EAGLE-1)
    checkpoint_every: int = 200
    seed: int = 0


def make_optimizer(config: ContextTrainConfig) -> optim.Optimizer:
    schedule = optim.join_schedules(
        [optim.linear_schedule(1e-7, config.learning_rate, max(config.warmup_steps, 1)),
         optim.cosine_decay(config.learning_rate, max(config.steps - config.warmup_steps, 1),
                            config.learning_rate * 0.1)],
        [max(config.warmup_steps, 1)])
    return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def train_drafter(drafter: ContextDrafter, weight: mx.array, embed: Callable,
                  data: SequenceFeatures, slots: np.ndarray, config: ContextTrainConfig,
                  out_dir: Optional[Path] = None, resume: bool = False, log=print,
                  until: Optional[int] = None) -> list:
    """Adam on ``drafter`` only (backbone frozen; ``weight``: the output
    projection's head-vocabulary rows, ``slots``: token id -> row, IGNORE when
    absent). Step i's windows depend only on (seed, i), so a resumed run repeats
    exactly what an uninterrupted one does. ``until``: stop after that step (a
    run cut into chunks, each resumed from the last one's checkpoint). Returns
    per-step logs."""
    optimizer = make_optimizer(config)
    found = latest_checkpoint(out_dir) if resume and out_dir else None
    start = load_checkpoint(found, drafter, optimizer) if found else 0

    def loss_fn(model, feats, tokens, targets, mask):
        return drafter_loss(model, weight, embed, feats, tokens, targets, mask,
                            config.feature_weight, config.token_weight, config.unroll)

    step_fn = nn.value_and_grad(drafter, loss_fn)
    history = []
    stop = config.steps if until is None else min(until, config.steps)
    for step in range(start, stop):
        rng = np.random.default_rng([config.seed, step])
        rows = rng.choice(len(data), size=min(config.batch_size, len(data)), replace=False)
        feats, tokens, targets, mask = window_batch(data, rows, config.window, rng)
        targets = np.where(targets >= 0, slots[np.maximum(targets, 0)], IGNORE)
        (loss, stats), grads = step_fn(drafter, mx.array(feats), mx.array(tokens),
                                       mx.array(targets), mx.array(mask))
        optimizer.update(drafter, grads)
        mx.eval(drafter.parameters(), optimizer.state, loss, stats)
        top1 = [float(c.item()) / max(float(n.item()), 1.0) for c, n in stats]
        history.append({"step": step + 1, "loss": float(loss.item()), "top1": top1})
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            log(f"step {step + 1}/{config.steps}  loss {loss.item():.4f}  top-1 per pass "
                + " ".join(f"{t:.3f}" for t in top1))
        if out_dir and ((step + 1) % config.checkpoint_every == 0 or step + 1 == stop):
            save_checkpoint(out_dir, drafter, optimizer, step + 1)
    return history


def held_out_accuracy(drafter: ContextDrafter, weight: mx.array, embed: Callable,
                      data: SequenceFeatures, slots: np.ndarray, passes: int = 3,
                      window: int = 256, batches: int = 8) -> list:
    """Top-1 per drafting depth on held-out sequences (depth d: the drafter fed
    its own estimates d-1 times, as ``drafter_loss`` trains it)."""
    rng = np.random.default_rng(1234)
    correct, counted = np.zeros(passes), np.zeros(passes)
    for b in range(batches):
        rows = rng.choice(len(data), size=min(16, len(data)), replace=False)
        feats, tokens, targets, mask = window_batch(data, rows, window, rng)
        targets = np.where(targets >= 0, slots[np.maximum(targets, 0)], IGNORE)
        _, stats = drafter_loss(drafter, weight, embed, mx.array(feats), mx.array(tokens),
                                mx.array(targets), mx.array(mask), 1.0, 1.0, passes)
        for p, (c, n) in enumerate(stats):
            correct[p] += c.item()
            counted[p] += n.item()
    return (correct / np.maximum(counted, 1)).tolist()
