"""Command line for Medusa head training: parse arguments, prepare the cached
data, call ``train``, then measure what was saved (held-out accuracy, tree).

    python -m medusa_mlx.train --model stories260K.bin --data tinystories_val.txt \\
        --out heads/stories260K
"""

import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..cli import ArgumentParser
from ..errors import UsageError
from ..heads import keep_heads, save_heads
from .trainer import TrainConfig, fresh_heads, train
from .data import DataConfig


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m medusa_mlx.train",
                                description="Train Medusa heads on a frozen MLX model.")
    p.add_argument("--model", required=True,
                   help="llama2.c .bin, .gguf, 'smollm2', or an mlx-lm model path / hub id")
    p.add_argument("--data", nargs="+", default=[],
                   help="plain-text files (documents separated by blank lines) or JSONL "
                        "of {prompt|messages|text}")
    p.add_argument("--answers", nargs="+", default=[],
                   help="answer stores (folders of distill chunks or .jsonl[.gz] files, e.g. "
                        "data/distilled/smollm2 ../shared/data/self_distilled/"
                        "smollm2_answers.jsonl.gz): their non-held-out answers train; their "
                        "held-out answers are the held-out split when --data is not given")
    p.add_argument("--extra-data", nargs="+", default=[],
                   help="training-only files: every record trains and the held-out split "
                        "still comes from --data alone, so adding data keeps it unchanged")
    p.add_argument("--out", required=True, help="output heads folder")
    p.add_argument("--kind", default="medusa", choices=["medusa", "context"],
                   help="medusa: Medusa heads on h_t; context: an EAGLE-style context drafter "
                        "(one decoder layer over the text)")
    p.add_argument("--window", type=int, default=256,
                   help="--kind context: positions per training window")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="--kind context: stop after this step (a checkpoint is written); "
                        "continue later with --resume, exactly as one run")
    p.add_argument("--unroll", type=int, default=1,
                   help="--kind context: training-time test passes (the drafter fed its own "
                        "outputs, as deeper tree nodes are at decoding; 1: EAGLE-1)")
    p.add_argument("--mode", default="auto", choices=["auto", "generate", "text"],
                   help="generate: the base model answers/continues every record; "
                        "text: teacher forcing on the text itself")
    p.add_argument("--held-out", type=float, default=0.1)
    p.add_argument("--prompt-tokens", type=int, default=16,
                   help="text records: prompt length when generating continuations")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--samples-per-prompt", type=int, default=0,
                   help="also train on N answers per training prompt sampled at --sample-temp "
                        "(more varied text; labels stay the base model's argmax)")
    p.add_argument("--sample-temp", type=float, default=0.7)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "medusa-mlx" / "train"))
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--shared-lm-head", action="store_true",
                   help="reuse the base lm_head (Medusa v2 style, small files)")
    p.add_argument("--sequential-heads", action="store_true",
                   help="head k also sees the token before its target (the committed token, "
                        "then the previous head's guess): more accurate; a medusa-mlx "
                        "extension that torch Medusa and vLLM cannot load")
    p.add_argument("--loss-vocab", default="full", choices=["full", "observed", "head"],
                   help="observed: softmax over label tokens only; head: over the --head-vocab "
                        "tokens only, the ones decoding can propose (both need --shared-lm-head)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tree", default="measure",
                   help="'measure': choose the tree from held-out acceptance and this "
                        "machine's verification cost; a preset name; or 'none'")
    p.add_argument("--max-tree-nodes", type=int, default=64)
    p.add_argument("--keep-heads", type=int, default=None,
                   help="save only the first N heads (all --num-heads are trained; with "
                        "sequential heads the first N are unaffected by the rest)")
    p.add_argument("--head-vocab", type=int, default=None, metavar="N",
                   help="shared-lm_head heads score only the N most frequent training "
                        "targets (cheaper heads; accuracy and tree are measured with them)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights as saved (float16 halves a shipped heads folder)")
    return p


def training_data(backbone, tokenizer, args, data_config, log):
    """The records of ``--data`` (answered, held-out split) and the answer stores
    of ``--answers``; held-out positions come from ``--data`` when given."""
    from .data import Dataset, Features, answer_dataset, prepare

    parts = []
    if args.data:
        parts.append(prepare(backbone, tokenizer, args.model, data_config, args.cache_dir, log=log))
    if args.answers:
        parts.append(answer_dataset(backbone, args.model, args.answers, args.max_seq_len,
                                    args.cache_dir, log=log))
    train = [p.train for p in parts if p.train is not None]
    if not train:
        raise UsageError("no training positions in --data / --answers")
    return Dataset(Features.concat(train) if len(train) > 1 else train[0], parts[0].held_out,
                   parts[0].held_out_prompts, parts[0].cache_dir)


def main(argv=None):
    """``python -m medusa_mlx.train`` / ``medusa-train``."""
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    from rich.console import Console

    from ..backbone import split_backbone, token_embedding
    from ..model import medusa_model
    from ..load import load_backbone
    from .tree_search import choose_tree_for
    from .evaluate import decoding_projection, head_accuracy

    args = configure_parser().parse_args(argv)
    if not args.data and not args.answers:
        raise UsageError("give training data: --data FILE... and/or --answers STORE...")
    if args.head_vocab and not args.shared_lm_head and args.kind == "medusa":
        raise UsageError("--head-vocab needs --shared-lm-head")
    if args.loss_vocab == "head" and not args.head_vocab:
        raise UsageError("--loss-vocab head needs --head-vocab N")
    if args.held_out <= 0 and args.tree == "measure" and args.kind == "medusa":
        raise UsageError("--tree measure needs held-out data (--held-out > 0), "
                         "or pass --tree PRESET / none")
    console = Console()
    tic = time.perf_counter()
    mx.random.seed(args.seed)
    backbone, tokenizer, _ = load_backbone(args.model)
    data_config = DataConfig(files=args.data, mode=args.mode, held_out=args.held_out,
                             prompt_tokens=args.prompt_tokens,
                             max_new_tokens=args.max_new_tokens, max_seq_len=args.max_seq_len,
                             max_records=args.max_records, batch_size=args.gen_batch_size,
                             seed=args.seed, samples_per_prompt=args.samples_per_prompt,
                             sample_temp=args.sample_temp, extra_files=args.extra_data)
    if args.kind == "context":
        from .context_cli import run

        return run(args, backbone, tokenizer, data_config, console, argv)
    _, lm_head = split_backbone(backbone)
    dataset = training_data(backbone, tokenizer, args, data_config, console.print)
    if dataset.held_out is None and args.tree == "measure":
        raise UsageError("--tree measure needs held-out positions (none in --data / --answers); "
                         "pass --tree PRESET / none")
    data_seconds = time.perf_counter() - tic
    config = TrainConfig(num_heads=args.num_heads, num_layers=args.num_layers,
                         shared_lm_head=args.shared_lm_head,
                         sequential=args.sequential_heads, steps=args.steps,
                         batch_size=args.batch_size, grad_accum=args.grad_accum,
                         learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
                         weight_decay=args.weight_decay,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         loss_vocab=args.loss_vocab)
    hidden_size = dataset.train.hidden.shape[1]
    vocab = lm_head(mx.zeros((1, hidden_size))).shape[-1]
    heads = fresh_heads(lm_head, hidden_size, vocab, config)
    vocab_ids = None
    if args.head_vocab:  # chosen up front: --loss-vocab head trains on exactly these tokens
        from .head_vocab import choose_head_vocab

        vocab_ids = np.array(choose_head_vocab(dataset.train.labels, args.head_vocab))
        heads.args.extra["head_vocab"] = vocab_ids.tolist()
    console.print(f"training {config.num_heads} heads x {config.num_layers} layers on "
                  f"{len(dataset.train)} positions ({args.steps} steps)")
    tic_train = time.perf_counter()
    embed = token_embedding(backbone)
    history = train(heads, lm_head, dataset.train, config, out_dir=args.out,
                    resume=args.resume, embed=embed)
    train_seconds = time.perf_counter() - tic_train
    # Before evaluation: the figures and the tree describe exactly what is saved.
    if args.keep_heads is not None:
        keep_heads(heads, args.keep_heads)
    heads.set_dtype(getattr(mx, args.dtype))
    model = medusa_model(backbone, heads)  # the heads as decoding runs them (head vocabulary included)
    projection, _ = decoding_projection(model)
    if vocab_ids is not None:
        from .head_vocab import coverage

        if dataset.held_out is not None:
            console.print(f"head vocabulary: {len(vocab_ids)} tokens, held-out label coverage "
                          f"{coverage(dataset.held_out.labels, vocab_ids.tolist()):.3f}")
    accuracy = (head_accuracy(heads, projection, dataset.held_out, embed=embed, vocab=vocab_ids)
                if dataset.held_out is not None else {"top1": [], "top5": []})
    for k, (t1, t5) in enumerate(zip(accuracy["top1"], accuracy["top5"])):
        console.print(f"held-out head {k}: top-1 {t1:.3f}  top-5 {t5:.3f}")
    if heads.args.sequential and dataset.held_out is not None:
        # What a tree drafted branch by branch gets on the right path (draft.py).
        forced = head_accuracy(heads, projection, dataset.held_out, embed=embed,
                               vocab=vocab_ids, teacher_forced=True)
        accuracy["true_tokens"] = {"top1": forced["top1"], "top5": forced["top5"]}
        console.print(f"held-out top-1 fed the true earlier tokens: {forced['top1']}")
    extra = {
        "base_model": args.model,
        "training": {
            "command": "python -m medusa_mlx.train " + shlex.join(argv or sys.argv[1:]),
            "config": asdict(config),
            "data": {k: v for k, v in asdict(data_config).items() if k != "batch_size"},
            "answers": list(args.answers),
            "train_positions": len(dataset.train),
            "data_seconds": round(data_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "final_loss": history[-1].loss if history else None,
        },
        "held_out_accuracy": accuracy,
    }
    heads.args.extra.update(extra)
    if args.tree == "measure":
        choice = choose_tree_for(model, dataset.held_out, max_nodes=args.max_tree_nodes)
        heads.args.extra["tree"] = [list(p) for p in choice.paths]
        heads.args.extra["tree_choice"] = choice.summary()
        console.print(f"tree: {len(choice.paths)} nodes, expected {choice.expected_length:.2f} "
                      f"tokens/step at {choice.relative_cost:.2f}x a plain step "
                      f"-> {choice.speedup:.2f}x (estimate)")
    elif args.tree != "none":
        from ..tree import PRESETS

        heads.args.extra["tree"] = [list(p) for p in PRESETS[args.tree]]
    save_heads(args.out, heads)
    console.print(f"saved heads to {args.out} ({time.perf_counter() - tic:.0f} s in all)")
