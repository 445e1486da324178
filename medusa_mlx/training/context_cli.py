"""``python -m medusa_mlx.train --kind context``: train a context drafter on
answer stores and/or ``--data`` records the base model answers (see
``training/context.py``), measure it on held-out answers, choose its tree and
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
from .sequences import answer_sequences, cached_sequence_features


def answer_labels(data) -> np.ndarray:
    """The base model's tokens at the positions the drafter is trained to guess."""
    keep = np.zeros(len(data.tokens), bool)
    for i, start in enumerate(data.starts):
        keep[data.offsets[i] + start + 1: data.offsets[i + 1]] = True
    return data.predicted[keep]


def record_sequences(backbone, tokenizer, args, config) -> list:
    """``--data`` for a drafter: the records answered or continued by the base
    model (answers cached as the Medusa trainer caches them), split as it splits
    them. -> [training (tokens, start) list, held-out list]."""
    from .answers import AnswerCache
    from .data import answer_cache_path, build_sequences, read_records, split_records

    records = read_records(config.files)[: config.max_records]
    answers = AnswerCache(answer_cache_path(args.cache_dir, args.model))
    return [[(s.tokens, s.start) for s in build_sequences(backbone, tokenizer, split, config,
                                                          answers=answers)] if split else []
            for split in split_records(records, config.held_out, config.seed)]


def run(args, backbone, tokenizer, data_config, console, argv=None) -> None:
    tic = time.perf_counter()
    groups = {"train": [], "held": []}  # lists of (tokens, start), one per source file
    if args.data:
        train_rows, held_rows = record_sequences(backbone, tokenizer, args, data_config)
        groups["train"].append(train_rows)
        groups["held"].append(held_rows)
    if args.answers:
        files = answer_files(args.answers)
        groups["train"] += answer_sequences(files, args.max_seq_len, False, args.max_records)
        if not args.data:  # as for Medusa heads: --data's split is the held-out one
            groups["held"] += answer_sequences(files, args.max_seq_len, True)
    train, held = [cached_sequence_features(backbone, args.model, groups[k], args.cache_dir,
                                            log=console.print) for k in ("train", "held")]
    if train is None:
        raise UsageError("no training sequences in --data / --answers")
    if args.tree == "measure" and held is None:
        raise UsageError("--tree measure needs held-out sequences (--held-out > 0 with --data, "
                         "held-out answers in --answers), or pass --tree PRESET / none")
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
            "data": list(args.data),
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
    elif args.tree != "none":
        extra["tree"] = [list(p) for p in PRESETS[args.tree]]
    drafter.set_dtype(getattr(mx, args.dtype))  # medusa_model computes in the backbone's dtype
    save_heads(args.out, drafter, extra)
    console.print(f"saved context drafter to {args.out} ({time.perf_counter() - tic:.0f} s in all)")
