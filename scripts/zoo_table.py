"""Print the README's architecture table from a zoo test run.

    MEDUSA_ZOO_TABLE=zoo.jsonl python -m pytest -q tests/test_zoo.py
    python scripts/zoo_table.py zoo.jsonl > zoo.md

tests/test_zoo.py builds every module of the installed mlx_lm/models/ tiny and
random and records each outcome: supported (Medusa greedy token-identical to
mlx-lm greedy with chain-3 and tree-16 on 2 prompts, partially-right heads, and
the attached heads on tree-16), refused with attach_heads' one-line reason, or
not built here. The distributed column says whether ``distributed.check_shardable``
accepts a supported architecture for 2 ranks (a static check, not a multi-process run).
"""

import json
import sys


def main(path: str) -> None:
    import mlx_lm

    outcomes = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            outcomes[row["arch"]] = row
    rows, counts = [], {"supported": 0, "refused": 0, "not built": 0}
    for arch, o in sorted(outcomes.items()):
        if o["skipped"]:
            status, dist, reason = "not built", "", o["reason"]
        elif o["supported"]:
            status, dist = "supported", "yes" if o["shardable"] else "no"
            reason = "" if o["shardable"] else o["reason"].split(": ", 1)[-1]
        else:
            status, dist = "refused", ""
            reason = o["reason"].split("is not supported: ", 1)[-1]
        counts[status] += 1
        rows.append(f"| `{arch}` | {status} | {dist} | {reason.replace('|', '/')} |")
    print(f"Architectures in mlx-lm {mlx_lm.__version__}: {len(rows)} — "
          + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".\n")
    print("| architecture | Medusa | distributed (2 ranks) | reason |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("error: usage: python scripts/zoo_table.py ZOO_JSONL", file=sys.stderr)
        sys.exit(1)
    try:
        main(sys.argv[1])
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
