"""Prompt sets and answer stores for self-distillation: which prompts exist,
which are held out, and the answers the base model wrote to them.

The held-out split is a hash of the prompt id (all of GSM8K test), so it never
moves when files grow or sources are added, and every tool (``distill``,
``train --answers``, ``evaluate --prompt-sets``) agrees on it without sharing
state. Answers live in gzip chunks of rows ``{"id", "prompt_ids", "answer_ids",
"finish"}`` (the format of ``../shared/data/self_distilled``), optionally with
``messages`` (generated prompts) and ``parent`` (follow-ups).
"""

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

REAL_SOURCES = ("oasst", "self_instruct", "humaneval", "gsm8k_train", "gsm8k_test")
# Held-out fraction per source (by id hash). HumanEval is small, so a larger share
# is held out to give its per-source figure at least ~40 prompts.
HELD_OUT = {"oasst": 0.1, "self_instruct": 0.1, "humaneval": 0.25, "gsm8k_train": 0.05,
            "gsm8k_test": 1.0, "magpie": 0.05, "followup": 0.05}


@dataclass
class Prompt:
    id: str
    messages: list  # chat messages up to (and including) the last user turn
    parent: Optional[str] = None  # follow-ups: the id of the answered first turn
    source: str = field(init=False)

    def __post_init__(self):
        self.source = self.id.rsplit("-", 1)[0]


def is_held_out(prompt_id: str) -> bool:
    """Fixed by the id alone, so adding prompts or sources never moves the split."""
    source = prompt_id.rsplit("-", 1)[0]
    fraction = HELD_OUT.get(source, 0.1)
    h = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) / 0x100000000
    return h < fraction


def read_prompt_file(path: Path) -> list[Prompt]:
    rows = [json.loads(line) for line in Path(path).read_text().split("\n") if line.strip()]
    return [Prompt(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in rows]


def read_answers(paths) -> Iterator[dict]:
    """Rows of answer files (``.jsonl`` or ``.jsonl.gz``)."""
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


class AnswerStore:
    """A folder of answer chunks: ``{tag}.{n:04d}.jsonl.gz``. ``done`` holds the
    ids answered here or in any ``extra`` file (e.g. the shared head start)."""

    def __init__(self, folder: Path, extra: tuple = ()):
        self.folder = Path(folder)
        self.extra = [Path(p) for p in extra if Path(p).exists()]
        self.done = {r["id"] for r in read_answers(self.chunks() + self.extra)}

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl.gz")) if self.folder.is_dir() else []

    def rows(self) -> Iterator[dict]:
        return read_answers(self.chunks() + self.extra)

    def write_chunk(self, tag: str, rows: list) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len([p for p in self.chunks() if p.name.startswith(tag + ".")])
        path = self.folder / f"{tag}.{n:04d}.jsonl.gz"
        tmp = path.with_suffix(".tmp")
        # No name, mtime=0: the same rows give the same bytes (clean git diffs on re-runs).
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            for r in rows:
                f.write((json.dumps(r, separators=(",", ":")) + "\n").encode())
        os.replace(tmp, path)
        self.done.update(r["id"] for r in rows)
        return path


def held_out_prompts(prompts: list[Prompt], per_source: Optional[int] = None) -> dict:
    """Held-out prompts grouped by source, in a fixed order (by id hash), at most
    ``per_source`` each: what evaluation decodes, never what training reads."""
    groups: dict = {}
    for p in sorted(prompts, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest()):
        if is_held_out(p.id):
            groups.setdefault(p.source, []).append(p)
    return {s: g[:per_source] for s, g in sorted(groups.items())}


def training_rows(rows, max_seq_len: int = 1024, held_out: bool = False,
                  seen: Optional[set] = None) -> Iterator[tuple[list, int]]:
    """``(tokens, start)`` for every answer that may be trained on (with
    ``held_out``: every held-out answer instead), each id once (``seen``: ids
    already taken, updated), sequences cut to ``max_seq_len`` tokens; ``start``
    is the last prompt position (the first whose labels are answer tokens)."""
    for r in split_rows(rows, held_out, seen):
        row = training_row(r, max_seq_len)
        if row is not None:
            yield row


def training_row(r: dict, max_seq_len: int) -> Optional[tuple[list, int]]:
    """One answer row -> ``(tokens, start)`` cut to ``max_seq_len`` tokens, or
    None when the cut leaves no answer token."""
    tokens = (r["prompt_ids"] + r["answer_ids"])[:max_seq_len]
    return (tokens, len(r["prompt_ids"]) - 1) if len(tokens) > len(r["prompt_ids"]) else None


def split_rows(rows, held_out: bool, seen: Optional[set] = None) -> Iterator[dict]:
    """Answer rows of one split with an answer, each id once."""
    seen = set() if seen is None else seen
    for r in rows:
        if r["id"] in seen or is_held_out(r["id"]) != held_out or not r["answer_ids"]:
            continue
        seen.add(r["id"])
        yield r


def store_status(paths, max_seq_len: int = 1024) -> dict:
    """Per source: answers and positions that train (an answer gives one
    position per answer token plus the last prompt token's, as cut by
    ``training_rows``), and the held-out answers the files hold."""
    status: dict = {}
    for held in (False, True):
        for r in split_rows(read_answers(paths), held):
            entry = status.setdefault(Prompt(r["id"], []).source,
                                      {"answers": 0, "positions": 0, "held_out": 0})
            if held:
                entry["held_out"] += 1
                continue
            row = training_row(r, max_seq_len)
            if row is not None:
                entry["answers"] += 1
                entry["positions"] += len(row[0]) - row[1]
    return dict(sorted(status.items(), key=lambda kv: -kv[1]["positions"]))


def template_prompts(paths) -> list[Prompt]:
    """The template chat prompts (``data/chat_prompts*.jsonl``), ids by file and line."""
    prompts = []
    for path in paths:
        tag = "template_extra" if "extra" in Path(path).name else "template"
        rows = [json.loads(line) for line in Path(path).read_text().split("\n") if line.strip()]
        prompts += [Prompt(f"{tag}-{i}", [{"role": "user", "content": r["prompt"]}])
                    for i, r in enumerate(rows)]
    return prompts


def answer_files(paths) -> list[Path]:
    """Answer files named directly, and every chunk inside a named folder (the
    ``AnswerStore`` chunks, ``*.jsonl.gz``: not the folder's ``log.jsonl``)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.jsonl.gz"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no answer file or folder at {p}")
    return files
