"""Train Medusa heads on a frozen MLX backbone (Medusa-1 recipe, self-distillation).

    python -m medusa_mlx.train --model stories260K.bin --data tinystories_val.txt \\
        --out heads/stories260K

Head k's loss is the cross-entropy against the base model's own next tokens
shifted by 2+k (see ``training.data``), weighted by ``decay**k`` (Medusa uses 0.8).
Blocks start at zero and projections at the base lm_head, so at step 0 every
head predicts exactly what the base model predicts for the next token.
Training runs on cached hidden states: the backbone never runs in the loop.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from ..backbone import lm_head_weight
from ..heads import HeadsArgs, MedusaHeads, init_heads
from .data import IGNORE, MAX_LABEL_HEADS, Features, relabel, teacher_tokens

@dataclass
class TrainConfig:
    num_heads: int = 4
    num_layers: int = 1
    shared_lm_head: bool = False
    sequential: bool = False  # heads also see the token before their target (see heads.py)
    steps: int = 1000  # optimizer updates
    batch_size: int = 256  # positions per micro-batch
    grad_accum: int = 1  # micro-batches per update
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    decay: float = 0.8  # head k's loss weight is decay**k
    checkpoint_every: int = 200
    seed: int = 0
    # "observed": with a shared lm_head, normalise the loss over the tokens that
    # occur as labels only (a few thousand of SmolLM2's 49152): ~10x cheaper steps
    # on a CPU. "head": over the heads' own head vocabulary (``head_vocab`` in
    # their config), the only tokens decoding lets them propose; labels outside
    # it are skipped.
    loss_vocab: str = "full"


# ---------------------------------------------------------------------------
# loss


def medusa_loss(heads: MedusaHeads, lm_head: Callable, hidden: mx.array, labels: mx.array,
                decay: float = 0.8, embed: Optional[Callable] = None,
                tokens: Optional[mx.array] = None):
    """hidden (B, H), labels (B, K) with IGNORE where no target ->
    (sum_k decay**k * mean CE_k, per-head top-1 correct counts, per-head counts).
    Sequential heads also take ``embed`` and ``tokens`` (B, K): the true token
    each head sees (teacher forcing; see ``teacher_tokens``)."""
    if tokens is None:
        logits = heads(hidden, lm_head)  # (K, B, V)
    else:
        logits = heads(hidden, lm_head, embed=embed, tokens=tokens)
    total = mx.array(0.0)
    correct, counts = [], []
    for k in range(logits.shape[0]):
        valid = labels[:, k] != IGNORE
        target = mx.where(valid, labels[:, k], 0)
        ce = nn.losses.cross_entropy(logits[k], target) * valid
        count = valid.sum()
        total = total + (decay**k) * ce.sum() / mx.maximum(count, 1)
        correct.append(((mx.argmax(logits[k], axis=-1) == target) * valid).sum())
        counts.append(count)
    return total, (mx.stack(correct), mx.stack(counts))


def fresh_heads(lm_head: Callable, hidden_size: int, vocab_size: int,
                config: TrainConfig) -> MedusaHeads:
    """Medusa's training init: zero blocks; own projections start as the base lm_head."""
    args = HeadsArgs(hidden_size, vocab_size, config.num_heads, config.num_layers,
                     config.shared_lm_head, config.sequential)
    weight = None if config.shared_lm_head else lm_head_weight(lm_head, hidden_size)
    return init_heads(args, seed=config.seed, zero_blocks=True, lm_head_weight=weight)


# ---------------------------------------------------------------------------
# batches


def micro_batch(n: int, batch_size: int, seed: int, index: int) -> np.ndarray:
    """Positions of micro-batch ``index``: a seeded permutation per epoch, so any
    step's batch is known without replaying earlier ones (exact resume)."""
    per_epoch = max(n // batch_size, 1)
    epoch, j = divmod(index, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[j * batch_size : (j + 1) * batch_size]


def make_optimizer(config: TrainConfig) -> optim.Optimizer:
    warmup = min(config.warmup_steps, config.steps)
    cosine = optim.cosine_decay(config.learning_rate, max(config.steps - warmup, 1),
                                end=config.learning_rate * 0.01)
    if warmup > 0:
        schedule = optim.join_schedules(
            [optim.linear_schedule(0.0, config.learning_rate, warmup), cosine], [warmup])
    else:
        schedule = cosine
    return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


# ---------------------------------------------------------------------------
# loop


@dataclass
class StepLog:
    step: int
    loss: float
    accuracy: list  # per-head top-1 on the step's batches
    learning_rate: float


def train(heads: MedusaHeads, lm_head: Callable, data: Features, config: TrainConfig,
          out_dir=None, resume: bool = False, show_progress: bool = True,
          embed: Optional[Callable] = None) -> list:
    """Optimise ``heads`` in place; return one StepLog per update. ``embed``
    (token ids -> embeddings, the backbone's) is needed by sequential heads."""
    out_dir = Path(out_dir) if out_dir is not None else None
    K = heads.num_heads
    if K > MAX_LABEL_HEADS:
        raise ValueError(f"at most {MAX_LABEL_HEADS} heads can be trained")
    sequential = heads.args.sequential
    if sequential and (embed is None or data.next_tokens is None):
        raise ValueError("sequential heads need embed and features with next_tokens")
    optimizer = make_optimizer(config)
    optimizer.init(heads.trainable_parameters())
    start = 0
    if resume and out_dir is not None and (ckpt := latest_checkpoint(out_dir)):
        start = load_checkpoint(ckpt, heads, optimizer)
    loss_and_grad = nn.value_and_grad(
        heads, lambda h, x, y, t: medusa_loss(h, lm_head, x, y, config.decay, embed, t))
    hidden_all, labels_all = data.hidden, data.labels[:, :K]
    if sequential:  # true token ids, before restrict_vocab renumbers the labels
        tokens_all = teacher_tokens(data.next_tokens, labels_all[:, : K - 1])
    if config.loss_vocab in ("observed", "head"):
        lm_head, labels_all = restrict_vocab(lm_head, labels_all, heads.args, config.loss_vocab)
    elif config.loss_vocab != "full":
        raise ValueError(f"unknown loss_vocab {config.loss_vocab!r}")
    history = []
    with _progress(show_progress, config.steps, start) as advance:
        for step in range(start, config.steps):
            grads = None
            loss_sum, correct, counts = 0.0, 0, 0
            for a in range(config.grad_accum):
                idx = micro_batch(len(data), config.batch_size, config.seed,
                                  step * config.grad_accum + a)
                x = mx.array(hidden_all[idx]).astype(mx.float32)
                y = mx.array(labels_all[idx])
                t = mx.array(tokens_all[idx]) if sequential else None
                (loss, (c, n)), g = loss_and_grad(heads, x, y, t)
                grads = g if grads is None else _tree_add(grads, g)
                mx.eval(loss, c, n, grads)
                loss_sum += loss.item()
                correct, counts = correct + np.array(c), counts + np.array(n)
            if config.grad_accum > 1:
                grads = _tree_scale(grads, 1.0 / config.grad_accum)
            lr = optimizer.learning_rate.item()
            optimizer.update(heads, grads)
            mx.eval(heads.parameters(), optimizer.state)
            log = StepLog(step + 1, loss_sum / config.grad_accum,
                          (correct / np.maximum(counts, 1)).tolist(), lr)
            history.append(log)
            advance(log)
            if out_dir is not None and (step + 1) % config.checkpoint_every == 0:
                save_checkpoint(out_dir, heads, optimizer, step + 1)
    return history


def restrict_vocab(lm_head: Callable, labels: np.ndarray, args: HeadsArgs,
                   kind: str = "observed"):
    """A projection onto the label tokens only (``observed``) or onto the heads'
    head vocabulary (``head``), and labels renumbered to match."""
    if not args.shared_lm_head:
        raise ValueError(f"loss_vocab={kind!r} needs shared_lm_head (own projections "
                         "would only be trained on part of their rows)")
    if kind == "head":
        if not args.extra.get("head_vocab"):
            raise ValueError("loss_vocab='head' needs heads with a head_vocab")
        observed = np.array(args.extra["head_vocab"], dtype=np.int64)
    else:
        observed = np.unique(labels[labels != IGNORE])
    weight = lm_head_weight(lm_head, args.hidden_size)[mx.array(observed)]
    mx.eval(weight)
    return (lambda x: x @ weight.T), relabel(labels, observed)


def _tree_add(a, b):
    from mlx.utils import tree_map

    return tree_map(lambda x, y: x + y, a, b)


def _tree_scale(a, s):
    from mlx.utils import tree_map

    return tree_map(lambda x: x * s, a)


class _progress:
    """Rich progress bar showing the running loss and per-head top-1 accuracy."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total, self.start = enabled, total, start
        self.recent: list = []

    def __enter__(self):
        if not self.enabled:
            return lambda log: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"))
        # Redirected to a file, a live bar shows nothing until the end: log lines instead.
        self.log_every = 0 if self.bar.console.is_terminal else max(self.total // 20, 1)
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=self.total, completed=self.start)
        return self._advance

    def _advance(self, log: StepLog):
        self.recent = (self.recent + [log])[-20:]
        loss = np.mean([r.loss for r in self.recent])
        acc = np.mean([r.accuracy for r in self.recent], axis=0)
        text = f"loss {loss:.3f}  top-1 " + " ".join(f"{a:.2f}" for a in acc)
        self.bar.update(self.task, advance=1, description=text)
        if self.log_every and log.step % self.log_every == 0:
            self.bar.console.print(f"step {log.step}/{self.total}  lr {log.learning_rate:.2e}  "
                                   + text)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

