"""The base model's answers to training prompts: batched generation, and an
on-disk cache that makes answering resumable and reusable across runs."""

import hashlib
import json
from pathlib import Path
from typing import Optional


def generate_batched(model, prompts: list, max_new_tokens: int, eos_ids, batch_size: int,
                     on_done=None, sampler=None) -> list[list[int]]:
    """Continuations of every prompt (greedy, or drawn by ``sampler``),
    ``batch_size`` at a time (mlx-lm's continuous batching; one-at-a-time
    decoding is ~10x slower on a CPU). The EOS token that ends an answer is kept:
    heads learn to predict it too. ``on_done(i, tokens)`` is called as soon as
    prompt i's answer is complete."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(
        model,
        max_tokens=max_new_tokens,
        stop_tokens=[[t] for t in eos_ids],
        sampler=sampler,
        completion_batch_size=batch_size,
        prefill_batch_size=min(batch_size, 8),
    )
    uids = gen.insert(prompts, [max_new_tokens] * len(prompts))
    index = {uid: i for i, uid in enumerate(uids)}
    out = {uid: [] for uid in uids}
    try:
        while responses := gen.next_generated():
            for r in responses:
                out[r.uid].append(r.token)
                if r.finish_reason is not None and on_done is not None:
                    on_done(index[r.uid], out[r.uid])
    finally:
        gen.close()
    return [out[uid] for uid in uids]


class AnswerCache:
    """The base model's answers on disk, one JSON line each, appended as soon as
    each answer is complete: an interrupted run resumes where it stopped, and
    another split, record limit or head setting reuses every answer already made.
    Keyed by the prompt's token ids, the token budget (greedy is deterministic)
    and, for sampled answers, a variant such as ``temp=0.7#2``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.answers = {}
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                # A killed run left half a line: end it, so new answers start clean.
                with self.path.open("a") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    continue
                self.answers[row["key"]] = row["tokens"]

    @staticmethod
    def key(prompt: list, limit: int, variant: str = "") -> str:
        fields = [prompt, limit] + ([variant] if variant else [])  # greedy keys as before
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:24]

    def get(self, prompt: list, limit: int, variant: str = "") -> Optional[list]:
        return self.answers.get(self.key(prompt, limit, variant))

    def put(self, prompt: list, limit: int, tokens: list, variant: str = "") -> None:
        key = self.key(prompt, limit, variant)
        self.answers[key] = list(tokens)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "tokens": list(tokens)}) + "\n")
