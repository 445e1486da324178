"""The benchmark's prompts: a built-in set (chat questions and story openings),
a shipped set named on the command line (``grounded``) or a JSONL file of
``{"prompt": ...}`` lines. Chat models get each prompt through their chat
template, as a user would (``generate.encode_prompt``).

``grounded_prompts.jsonl`` (beside this file): 35 prompts whose answers copy
from their input, where prompt lookup pays: summarize / extract / rewrite /
proofread TinyStories validation passages (CDLA-Sharing-1.0) and OASST prompts
that carry a passage (Apache-2.0), built by ``scripts/make_grounded_prompts.py``
(sources and selection rules in its docstring and ``grounded_prompts.md``)."""

import json
from pathlib import Path


CHAT_PROMPTS = [
    "What is the capital of France, and what is it famous for?",
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new programming language.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the water cycle for a ten-year-old.",
]
STORY_OPENINGS = [
    "Once upon a time, there was a little girl named Lily.",
    "Tom had a red ball. One day,",
    "The sun was shining and the birds were singing in the park.",
    "Once upon a time, a small dog lived in a big house.",
    "Sam and his mom went to the store to buy",
    "There was a big tree in the garden.",
]


def builtin_prompts(chat: bool) -> list[str]:
    """Chat questions and story openings, alternating, for chat models; story
    openings only for base models (a 260K-parameter story model has no use for
    questions, and their answers would only measure noise)."""
    if not chat:
        return list(STORY_OPENINGS)
    mixed = []
    for question, story in zip(CHAT_PROMPTS, STORY_OPENINGS):
        mixed += [question, story]
    return mixed


# Shipped sets: name -> file beside this module.
PROMPT_SETS = {"grounded": Path(__file__).with_name("grounded_prompts.jsonl")}


def read_prompts(path: Path) -> list[str]:
    """One JSON object ``{"prompt": "..."}`` per line; blank lines are skipped.
    ``path`` may also name a shipped set (``PROMPT_SETS``)."""
    path = PROMPT_SETS.get(str(path), path)
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected an object with a "prompt" string')
        prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts
