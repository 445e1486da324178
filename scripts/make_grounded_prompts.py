"""Build the input-grounded benchmark prompt set: prompts whose answers copy from their input.

Prompt lookup only pays where the answer repeats text it was given, so its
benchmark needs such prompts. Two sources, interleaved (so ``--num-prompts N``
takes both alike):

- "summarize / extract / rewrite this passage" over TinyStories validation
  passages (``../shared/data/tinystories_val.txt``: TinyStories by R. Eldan and
  Y. Li, CDLA-Sharing-1.0; see ../shared/data/README.md). A passage is one
  blank-line-separated block of 300-900 characters; passages and tasks are
  drawn with a fixed seed.
- OpenAssistant evaluation prompts that carry a passage
  (``../shared/data/prompts/oasst.jsonl``: Open-Assistant/oasst-model-eval,
  Apache-2.0; see ../shared/data/prompts/LICENSES.md): at most 2500 characters,
  a request to rework given text (rewrite, refactor, summarize, extract, edit,
  reformat, correct, improve, transform, tests for code) and a passage of at
  least 200 characters after the first line. Unchanged, in file order.

Each line: {"id", "source", "task", "prompt"}; ``medusa-bench --prompts`` reads "prompt".

    python scripts/make_grounded_prompts.py --out medusa_mlx/bench/grounded_prompts.jsonl
"""

import argparse
import json
import random
import re
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

TASKS = {
    "summarize": "Summarize this passage in three sentences.",
    "extract": "Quote, word for word, every sentence of this passage that contains a name.",
    "rewrite-name": "Rewrite this passage, replacing the name {name} with Sam everywhere. Keep everything else the same.",
    "rewrite-tense": "Rewrite this passage in the present tense.",
    "proofread": "Copy this passage and fix any mistakes you find.",
    "question": "Who are the characters in this passage, and what happens to each of them? Quote the passage in your answer.",
}

REWORK = re.compile(
    r"\b(rewrite|refactor|summari[sz]e|extract|edit|reformat|correct|fix|improve|transform|"
    r"proofread|rephrase|paraphrase|unit tests?)\b", re.I)
# A capitalised word in mid-sentence (after a lower-case word or a comma): a name.
CAPITALIZED = re.compile(r"(?<=[a-z,] )[A-Z][a-z]+\b")


def story_passages(text: str) -> list[str]:
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text)]
    return [b for b in blocks if 300 <= len(b) <= 900]


def tinystories_prompts(path: Path, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    passages = story_passages(path.read_text(encoding="utf-8"))
    picked = sorted(rng.sample(range(len(passages)), count))
    names = list(TASKS)
    out = []
    for i, index in enumerate(picked):
        passage = passages[index]
        task = names[i % len(names)]
        found = CAPITALIZED.findall(passage)
        if task == "rewrite-name" and not found:
            task = "rewrite-tense"
        instruction = TASKS[task].format(name=found[0] if found else "")
        out.append({"id": f"tinystories-{index}", "source": "tinystories_val.txt", "task": task,
                    "prompt": f"{instruction}\n\n{passage}"})
    return out


def oasst_prompts(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        prompt = record["prompt"]
        first, _, rest = prompt.partition("\n")
        if len(prompt) <= 2500 and REWORK.search(first) and len(rest.strip()) >= 200:
            out.append({"id": record["id"], "source": record["source"], "task": "oasst-passage",
                        "prompt": prompt})
    return out


def interleave(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--stories", type=int, default=24, help="TinyStories prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stories = tinystories_prompts(args.data / "tinystories_val.txt", args.stories, args.seed)
    oasst = oasst_prompts(args.data / "prompts" / "oasst.jsonl")
    rows = interleave(stories, oasst)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    print(f"wrote {args.out}: {len(stories)} TinyStories + {len(oasst)} OASST prompts")


if __name__ == "__main__":
    main()
