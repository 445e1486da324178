"""Self-distillation data from real, varied prompts: the base model's own greedy
answers, made in resumable chunks and stored compactly enough to keep in git.

Why: heads trained on template chats accepted 2.05 tokens/step on held-out
template chats but only 1.62-1.69 on real user prompts. The data here is the
model's behaviour on what people ask: OASST, GSM8K, self-instruct and HumanEval
prompts (``../shared/data/prompts``), prompts the model writes itself (Magpie:
the chat template up to the start of a user turn, sampled) and second turns
(the model asks a follow-up to its own answer).

Held-out prompts (``prompt_sets.is_held_out``) are never answered for training
(generated prompts are answered, and training skips the held-out ones).

Throughput: mlx-lm's ``BatchGenerator`` pads a batch to its longest prompt, so
prompts are answered in length order, one batch per chunk (128 prompts in file
order grew to 14 GB and fell from ~124 to ~35 tokens/s in a trial here; sorted,
4 GB and ~125 tokens/s). Each chunk is written atomically when its batch ends
(``prompt_sets.AnswerStore``): an interrupted run loses at most one batch and
resumes from the files present.
"""

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from .answers import generate_batched
from .prompt_sets import (
    REAL_SOURCES, AnswerStore, Prompt, answer_files, is_held_out, read_prompt_file, store_status,
    template_prompts,
)

MAX_PROMPT_TOKENS = 1024


def answer_chunks(model, tokenizer, chunks: list, max_new_tokens: int, batch_size: int,
                  on_chunk) -> dict:
    """Greedy answers to several chunks of prompts in ONE continuous batch: when
    an answer ends, the next prompt takes its slot, so the batch never drains to
    a few long answers between chunks. ``on_chunk(k, rows)`` is called as soon as
    every answer of chunk k is complete. Returns the round's throughput.
    Prompts go in chunk by chunk, shortest first within a chunk (mlx-lm's
    BatchGenerator pads a prefill batch to its longest prompt).
    Measured (scripts/bench_distill_batching.py: 128 GSM8K prompts, 96 new tokens, batch 32, OpenBLAS,
    load ~2-3): 4 chunks in one batch 92.0 tokens/s, one batch per chunk 96.3, the
    same tokens: no gain, so the CLI answers one chunk per batch by default."""
    eos = set(tokenizer.eos_token_ids)
    flat = []  # (chunk index, prompt, token ids)
    for k, chunk in enumerate(chunks):
        for p in chunk:
            ids = list(tokenizer.apply_chat_template(p.messages, add_generation_prompt=True))
            if len(ids) <= MAX_PROMPT_TOKENS:
                flat.append((k, p, ids))
    flat.sort(key=lambda item: (item[0], len(item[2])))
    remaining = Counter(k for k, _, _ in flat)
    rows: dict = {}
    tokens = 0

    def done(i, answer):
        nonlocal tokens
        k, prompt, ids = flat[i]
        tokens += len(answer)
        rows.setdefault(k, []).append(answer_row(prompt, ids, answer, eos))
        remaining[k] -= 1
        if remaining[k] == 0:
            on_chunk(k, rows.pop(k))

    start = time.perf_counter()
    generate_batched(model, [ids for _, _, ids in flat], max_new_tokens, sorted(eos),
                     batch_size, on_done=done)
    seconds = time.perf_counter() - start
    return {"prompts": len(flat), "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}


def answer_row(prompt: Prompt, prompt_ids: list, answer: list, eos: set) -> dict:
    row = {"id": prompt.id, "prompt_ids": prompt_ids, "answer_ids": list(answer),
           "finish": "stop" if answer and answer[-1] in eos else "length"}
    if prompt.source in ("magpie", "followup"):
        row["messages"] = prompt.messages  # generated prompts: keep their text
    if prompt.parent is not None:
        row["parent"] = prompt.parent
    return row


# ---------------------------------------------------------------------------
# prompts the model writes itself (Magpie) and follow-up questions


def user_turn_prefix(tokenizer, messages: Optional[list] = None) -> list[int]:
    """The chat template's tokens up to where the next user message's text starts."""
    marker = "\x00MAGPIE\x00"
    text = tokenizer.apply_chat_template((messages or []) + [{"role": "user", "content": marker}],
                                         tokenize=False, add_generation_prompt=False)
    return list(tokenizer.encode(text[: text.index(marker)], add_special_tokens=False))


_WORD = re.compile(r"\w+")


def acceptable_prompt(text: str, min_words: int = 4, max_words: int = 120) -> bool:
    """Filters for sampled user messages: a sane length, mostly ASCII (English),
    no degenerate repetition (a word 3-gram seen 3+ times), no template tokens."""
    words = _WORD.findall(text.lower())
    if not (min_words <= len(words) <= max_words) or "<|" in text:
        return False
    if sum(c.isascii() for c in text) < 0.95 * len(text):
        return False
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return not grams or max(grams.count(g) for g in set(grams)) < 3


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def sample_user_messages(model, tokenizer, prefixes: list, temp: float, seed: int,
                         max_tokens: int = 96, batch_size: int = 128) -> list[Optional[str]]:
    """One sampled user message per prefix (None where it ran out of tokens)."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    eos = sorted(set(tokenizer.eos_token_ids))
    outs = generate_batched(model, prefixes, max_tokens, eos, batch_size,
                            sampler=make_sampler(temp, top_p=0.95))
    texts = []
    for o in outs:
        if not o or o[-1] not in eos:
            texts.append(None)
        else:
            texts.append(tokenizer.decode(o[:-1]).strip())
    return texts


def magpie_prompts(model, tokenizer, count: int, start_index: int, seen: set,
                   temp: float = 1.0, batch_size: int = 128) -> tuple[list[Prompt], dict]:
    """Up to ``count`` new user prompts written by the model (deduplicated against
    ``seen``, normalised text), ids ``magpie-{n}`` from ``start_index``."""
    prefix = user_turn_prefix(tokenizer)
    texts = sample_user_messages(model, tokenizer, [prefix] * count, temp,
                                 seed=start_index, batch_size=batch_size)
    prompts, rejected = [], 0
    for text in texts:
        key = normalise(text or "")
        if text is None or key in seen or not acceptable_prompt(text):
            rejected += 1
            continue
        seen.add(key)
        prompts.append(Prompt(f"magpie-{start_index + len(prompts)}",
                              [{"role": "user", "content": text}]))
    return prompts, {"sampled": count, "kept": len(prompts), "rejected": rejected}


def followup_prompts(model, tokenizer, answered: list, start_index: int, seen: set,
                     temp: float = 0.8, batch_size: int = 128) -> tuple[list[Prompt], dict]:
    """A second user turn for each ``(prompt, answer_ids)`` first turn: the model
    asks a follow-up to its own answer, so multi-turn contexts are covered too."""
    eos = set(tokenizer.eos_token_ids)
    bases = [p.messages + [{"role": "assistant",
                            "content": tokenizer.decode([t for t in a if t not in eos]).strip()}]
             for p, a in answered]
    prefixes = [user_turn_prefix(tokenizer, m) for m in bases]
    keep = [i for i, p in enumerate(prefixes) if len(p) <= MAX_PROMPT_TOKENS - 256]
    texts = sample_user_messages(model, tokenizer, [prefixes[i] for i in keep], temp,
                                 seed=start_index, max_tokens=64, batch_size=batch_size)
    prompts, rejected = [], 0
    for i, text in zip(keep, texts):
        key = normalise(text or "")
        if text is None or key in seen or not acceptable_prompt(text, min_words=3):
            rejected += 1
            continue
        seen.add(key)
        prompts.append(Prompt(f"followup-{start_index + len(prompts)}",
                              bases[i] + [{"role": "user", "content": text}],
                              parent=answered[i][0].id))
    return prompts, {"sampled": len(keep), "kept": len(prompts), "rejected": rejected}


# ---------------------------------------------------------------------------
# the plan: which chunk next


# Chunks cycle over these kinds, so whatever has been made when a run stops is
# varied. Real prompts other than GSM8K come first (few, and the most varied).
CYCLE = ("magpie", "gsm8k_train", "followup", "magpie", "template", "gsm8k_train")


def next_chunk(kind: str, pending: dict, size: int) -> list[Prompt]:
    """The next ``size`` unanswered prompts of a fixed kind, shortest first
    (BatchGenerator pads to the longest prompt of a batch)."""
    todo = pending.get(kind, [])
    todo.sort(key=lambda p: sum(len(m["content"]) for m in p.messages))
    chunk, pending[kind] = todo[:size], todo[size:]
    return chunk


def distill(model, tokenizer, store: AnswerStore, prompts: list[Prompt], chunk_size: int,
            max_new_tokens: int, batch_size: int, minutes: float, log=print,
            max_chunks: Optional[int] = None, cycle: tuple = CYCLE,
            chunks_per_round: int = 1) -> int:
    """Answer training prompts until ``minutes`` have passed (or ``max_chunks``
    were written), ``chunks_per_round`` chunks per continuous batch; returns the
    number of chunks written."""
    deadline = time.time() + 60 * minutes
    by_id = {p.id: p for p in prompts}
    rows = list(store.rows())
    seen = {normalise(m["content"]) for p in prompts for m in p.messages if m["role"] == "user"}
    seen |= {normalise(m["content"]) for r in rows for m in r.get("messages", [])
             if m["role"] == "user"}
    counts = {k: sum(r["id"].startswith(k + "-") for r in rows) for k in ("magpie", "followup")}
    parents = {r.get("parent") for r in rows}
    pending: dict = {}
    for p in prompts:
        if p.id not in store.done and not is_held_out(p.id) and len(p.messages) == 1:
            kind = "real" if p.source in ("oasst", "self_instruct", "humaneval") else p.source
            kind = "template" if kind.startswith("template") else kind
            pending.setdefault(kind, []).append(p)
    turn = written = 0
    while time.time() < deadline and (max_chunks is None or written < max_chunks):
        round_size = chunks_per_round if max_chunks is None else min(chunks_per_round,
                                                                        max_chunks - written)
        kinds, chunks, infos = [], [], []
        for _ in range(len(cycle) + 1):  # at most one pass over the cycle per round
            if len(chunks) == round_size:
                break
            kind = "real" if pending.get("real") else cycle[turn % len(cycle)]
            turn += 1
            info: dict = {}
            if kind == "magpie":
                chunk, info = magpie_prompts(model, tokenizer, int(chunk_size * 1.25),
                                             counts["magpie"], seen, batch_size=batch_size)
                chunk = chunk[:chunk_size]
                counts["magpie"] += len(chunk)
            elif kind == "followup":
                firsts = [(by_id.get(r["id"]) or _row_prompt(r), r["answer_ids"]) for r in rows
                          if r.get("finish") == "stop" and r["id"] not in parents
                          and not is_held_out(r["id"]) and not r["id"].startswith("followup")]
                firsts = [f for f in firsts if f[0] is not None][:chunk_size]
                chunk, info = followup_prompts(model, tokenizer, firsts, counts["followup"],
                                               seen, batch_size=batch_size)
                counts["followup"] += len(chunk)
                parents |= {p.parent for p in chunk}
            else:
                chunk = next_chunk(kind, pending, chunk_size)
            chunk = [p for p in chunk if p.id not in store.done]
            if chunk:  # else this kind is used up (or nothing passed the filters)
                kinds.append(kind)
                chunks.append(chunk)
                infos.append(info)
        if not chunks:
            break

        def write(k, new_rows):
            nonlocal written
            path = store.write_chunk(kinds[k], new_rows)
            written += 1
            rows.extend(new_rows)
            entry = {"kind": kinds[k], "file": path.name, "prompts": len(new_rows),
                     "tokens": sum(len(r["answer_ids"]) for r in new_rows),
                     **{f"prompts_{key}": v for key, v in infos[k].items()},
                     "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            _log(store, entry, log)

        stats = answer_chunks(model, tokenizer, chunks, max_new_tokens, batch_size, write)
        if stats["prompts"]:  # else every prompt was over MAX_PROMPT_TOKENS
            _log(store, {"round": kinds, "batch_size": batch_size, **stats}, log)
    return written


def _log(store: AnswerStore, entry: dict, log) -> None:
    store.folder.mkdir(parents=True, exist_ok=True)
    with open(store.folder / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    log(json.dumps(entry))


def _row_prompt(row: dict) -> Optional[Prompt]:
    if row.get("messages"):
        return Prompt(row["id"], row["messages"])
    return None


def configure_parser():
    from ..cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m medusa_mlx.training.distill",
        description="Answer real and self-written prompts with the base model, in resumable chunks.")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts-dir", default="../shared/data/prompts")
    parser.add_argument("--templates", nargs="*", default=["data/chat_prompts.jsonl",
                                                           "data/chat_prompts_extra.jsonl"])
    parser.add_argument("--head-start", nargs="*",
                        default=["../shared/data/self_distilled/smollm2_answers.jsonl.gz"],
                        help="answer files already made (counted as done, read as data)")
    parser.add_argument("--out", default="data/distilled/smollm2")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="stop starting new chunks after this long")
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--chunks-per-round", type=int, default=1,
                        help="chunks answered in one continuous batch (1: the batch drains "
                             "between chunks)")
    parser.add_argument("--status", action="store_true",
                        help="print answers and training positions per source (JSON) and exit")
    return parser


def main(argv=None):
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    args = configure_parser().parse_args(argv)
    if args.status:
        files = answer_files([p for p in [args.out, *args.head_start] if Path(p).exists()])
        status = store_status(files)
        total = {k: sum(s[k] for s in status.values()) for k in ("answers", "positions", "held_out")}
        print(json.dumps({"sources": status, "total": total}, indent=1))
        return
    from ..load import load_backbone

    prompts = [p for s in REAL_SOURCES if (Path(args.prompts_dir) / f"{s}.jsonl").exists()
               for p in read_prompt_file(Path(args.prompts_dir) / f"{s}.jsonl")]
    prompts += template_prompts([t for t in args.templates if Path(t).exists()])
    model, tokenizer, _ = load_backbone(args.model)
    store = AnswerStore(Path(args.out), tuple(args.head_start))
    distill(model, tokenizer, store, prompts, args.chunk_size, args.max_new_tokens,
            args.batch_size, args.minutes, max_chunks=args.max_chunks,
            chunks_per_round=args.chunks_per_round)


if __name__ == "__main__":
    main()
