"""``python -m medusa_mlx.train --kind context``: train a context drafter on
answer stores (see ``training/context.py``), measure it on held-out answers and
save it as a heads folder with ``"kind": "context"``."""

import shlex
import sys
import time
from dataclasses import asdict

import mlx.core as mx
import numpy as np

from ..backbone import lm_head_weight, token_embedding
from ..context import drafter_args_for, init_drafter
from ..heads import save_heads
from ..errors import UsageError
from ..model import medusa_model
from ..tree import PRESETS
from .context import IGNORE, ContextTrainConfig, held_out_accuracy, train_drafter
from .head_vocab import choose_head_vocab
from .prompt_sets import answer_files
from .sequences import answer_sequence_features


def answer_labels(data) -> np.ndarray:
    """The base model's tokens at the positions the drafter is trained to guess."""
    keep = np.zeros(len(data.tokens), bool)
    for i, start in enumerate(data.starts):
        keep[data.offsets[i] + start + 1: data.offsets[i + 1]] = True
    return data.predicted[keep]


def run(args, backbone, console, argv=None) -> None:
    if not args.answers:
        raise UsageError("--kind context trains on answer stores: give --answers STORE...")
    tic = time.perf_counter()
    files = answer_files(args.answers)
    train = answer_sequence_features(backbone, args.model, files, args.max_seq_len,
                                     args.cache_dir, held_out=False,
                                     max_sequences=args.max_records, log=console.print)
    held = answer_sequence_features(backbone, args.model, files, args.max_seq_len,
                                    args.cache_dir, held_out=True,
                                    log=console.print)
    if train is None:
        raise UsageError("no training answers in --answers")
    if args.tree == "measure" and held is None:
        raise UsageError("--tree measure needs held-out answers in --answers, "
                         "or pass --tree PRESET / none")
    data_seconds = time.perf_counter() - tic
    model = medusa_model(backbone, None)
    hidden = train.hidden.shape[1]
    full = lm_head_weight(model.output_path, hidden)
    vocab = full.shape[0]
    ids = (np.array(choose_head_vocab(answer_labels(train), args.head_vocab))
           if args.head_vocab else np.arange(vocab))
    slots = np.full(vocab, IGNORE, np.int32)
    slots[ids] = np.arange(len(ids), dtype=np.int32)
    weight = full[mx.array(ids)]
    drafter = init_drafter(drafter_args_for(hidden, vocab, getattr(backbone, "args", None),
                                            max_depth=args.num_heads), seed=args.seed)
    if args.head_vocab:
        drafter.args.extra["head_vocab"] = ids.tolist()
    config = ContextTrainConfig(steps=args.steps, batch_size=args.batch_size, window=args.window,
                                learning_rate=args.learning_rate,
                                warmup_steps=args.warmup_steps,
                                weight_decay=args.weight_decay, unroll=args.unroll,
                                checkpoint_every=args.checkpoint_every, seed=args.seed)
    console.print(f"training a context drafter on {len(train)} answers, {train.positions} "
                  f"positions ({args.steps} steps x {args.batch_size} windows of {args.window})")
    tic_train = time.perf_counter()
    embed = token_embedding(backbone)
    history = train_drafter(drafter, weight, embed, train, slots, config, out_dir=args.out,
                            resume=args.resume, log=console.print, until=args.stop_after)
    if args.stop_after is not None and args.stop_after < args.steps:
        console.print(f"stopped after step {args.stop_after}: continue with --resume")
        return
    train_seconds = time.perf_counter() - tic_train
    drafter.set_dtype(getattr(mx, args.dtype))
    accuracy = (held_out_accuracy(drafter, weight.astype(getattr(mx, args.dtype)), embed, held,
                                  slots, passes=min(args.num_heads, 4))
                if held is not None else [])
    console.print("held-out top-1 per depth: " + " ".join(f"{a:.3f}" for a in accuracy))
    extra = {
        "base_model": args.model,
        "training": {
            "command": "python -m medusa_mlx.train " + shlex.join(argv or sys.argv[1:]),
            "config": asdict(config),
            "answers": list(args.answers),
            "train_sequences": len(train),
            "train_positions": train.positions,
            "data_seconds": round(data_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "final_loss": history[-1]["loss"] if history else None,
        },
        "held_out_top1_per_depth": accuracy,
    }
    if args.tree == "measure":
        from .tree_search import choose_tree_for

        choice = choose_tree_for(medusa_model(backbone, drafter), held, args.max_tree_nodes)
        extra["tree"] = [list(p) for p in choice.paths]
        extra["tree_choice"] = choice.summary()
        console.print(f"tree: {len(choice.paths)} nodes, expected {choice.expected_length:.2f} "
                      f"tokens/step at {choice.relative_cost:.2f}x a plain step "
                      f"-> {choice.speedup:.2f}x (estimate)")
    elif args.tree not in ("none", "measure"):
        extra["tree"] = [list(p) for p in PRESETS[args.tree]]
    save_heads(args.out, drafter, extra)
    console.print(f"saved context drafter to {args.out} ({time.perf_counter() - tic:.0f} s in all)")
