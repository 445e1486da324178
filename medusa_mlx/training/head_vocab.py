"""Restrict shared-projection heads to a "head vocabulary" of frequent tokens.

Heads only need to rank likely tokens; scoring all of a 49k vocabulary every
step costs as much as ~1/5 of a SmolLM2 forward on a CPU. The most frequent
target tokens of the training data (the cached ``labels`` of
``medusa_mlx.train``) cover nearly every token the heads ever get right.
Greedy and lossless output are unaffected: only the candidates change.

    python -m medusa_mlx.head_vocab medusa_mlx/shipped_heads/smollm2-135m-instruct \\
        --features out/cache/<key>/features-train.npz --size 4096
"""

import json
from pathlib import Path

import numpy as np

from ..cli import ArgumentParser
from ..heads import CONFIG_FILE


def choose_head_vocab(labels: np.ndarray, size: int) -> list[int]:
    """The ``size`` most frequent label ids (ignoring negative = no label), sorted by id."""
    flat = labels[labels >= 0].ravel()
    ids, counts = np.unique(flat, return_counts=True)
    keep = ids[np.argsort(-counts, kind="stable")[:size]]
    return sorted(int(i) for i in keep)


def coverage(labels: np.ndarray, vocab: list[int]) -> float:
    flat = labels[labels >= 0].ravel()
    return float(np.isin(flat, np.array(vocab)).mean()) if flat.size else 0.0


def write_head_vocab(heads_dir: Path, vocab: list[int]) -> None:
    path = Path(heads_dir) / CONFIG_FILE
    config = json.loads(path.read_text())
    if not config.get("shared_lm_head"):
        raise ValueError(f"{heads_dir}: head_vocab needs heads that share the backbone's lm_head")
    config["head_vocab"] = vocab
    path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv=None):
    from ..cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    parser = ArgumentParser(description="Give shared-projection heads a head vocabulary.")
    parser.add_argument("heads", type=Path, help="medusa-mlx heads folder (shared lm_head)")
    parser.add_argument("--features", type=Path, required=True, help="training cache .npz with 'labels'")
    parser.add_argument("--held-out", type=Path, default=None, help="held-out cache .npz, to report coverage")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args(argv)
    vocab = choose_head_vocab(np.load(args.features)["labels"], args.size)
    write_head_vocab(args.heads, vocab)
    print(f"head vocabulary: {len(vocab)} tokens")
    if args.held_out is not None:
        print(f"held-out label coverage: {coverage(np.load(args.held_out)['labels'], vocab):.3f}")


if __name__ == "__main__":
    main()
