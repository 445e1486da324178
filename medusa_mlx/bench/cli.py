"""``python -m medusa_mlx.bench`` / ``medusa-bench``: load the model, run every
method the arguments ask for (``runs``), print the table and write the JSON record
(``report``). Exit code 2 if a greedy Medusa output differs from plain greedy.

    python -m medusa_mlx.bench --oracle --json results.json
    python -m medusa_mlx.bench --model ../shared/data/stories260K.bin --trees chain-2,tree-8
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..cli import ArgumentParser, add_model_arguments, run_cli
from ..cost import VERIFY_SIZES, verify_cost_record
from ..conversation import encode_prompt
from ..heads import load_heads
from ..load import (EMBEDDED_DEFAULT, SHIPPED_HEADS, load, load_backbone, resolve_heads_path,
                    shipped_heads)
from ..model import is_context, medusa_model
from .prompts import builtin_prompts, read_prompts
from .report import SCHEMA, dtype_of, environment, render, summarize
from .runs import DEFAULT_TREES, make_methods, run_methods, tree_supported


def configure_parser():
    parser = ArgumentParser(
        description="Benchmark Medusa decoding against plain mlx-lm greedy decoding "
        "(and mlx-lm draft-model speculative decoding), interleaved, in one process.",
        epilog="examples:\n"
        "  python -m medusa_mlx.bench --oracle --json smollm2.json\n"
        "  python -m medusa_mlx.bench --model ../shared/data/stories260K.bin --oracle\n"
        "  python -m medusa_mlx.bench --model M --draft-model D --trees chain-2,tree-16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, drafting=False)
    parser.add_argument("--draft-model", default=None, help="also run mlx-lm speculative decoding with this draft model (same tokenizer)")
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--trees", default=DEFAULT_TREES, help=f"comma-separated tree presets, or 'auto' where supported (default: {DEFAULT_TREES})")
    parser.add_argument("--lookup", action="store_true", help="also run prompt lookup alone (no heads) and heads + lookup with each tree")
    parser.add_argument("--oracle", action="store_true", help="also run Medusa with heads that always guess right (the attainable upper bound)")
    parser.add_argument("--oracle-trees", default=None, help="trees for --oracle (default: the deepest chain the heads allow)")
    parser.add_argument("--prompts", default=None, help='JSONL file, one {"prompt": "..."} per line, or "grounded" (shipped: answers that copy their input; default: built-in set)')
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile runs (no per-step split)")
    parser.add_argument("--verify-sizes", default=",".join(map(str, VERIFY_SIZES)), help="token counts for the verify-cost curve ('' to skip)")
    parser.add_argument("--verify-repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write every figure and the environment to this file")
    parser.add_argument("--compare-heads", nargs="+", default=[], metavar="DIR",
                        help="also run these heads folders (Medusa heads or context drafters) on "
                             "the same backbone, interleaved in the same run, with every tree "
                             "they support: their ratios come from one run with the others'")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw speed per method (with its spread), tokens/step and the verify-cost "
                             "curve in one figure (needs matplotlib: pip install 'medusa-mlx[plot]')")
    return parser


def benchmark(args, log=print) -> dict:
    """Run everything the parsed ``args`` ask for and return the JSON record."""
    env = environment()
    if not env["representative"]:
        log("WARNING: reference BLAS in use: timings are not representative (see table)")
    model, tokenizer = load(args.model, args.medusa)
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = read_prompts(args.prompts) if args.prompts else builtin_prompts(chat)
    texts = texts[: args.num_prompts]
    prompts = [encode_prompt(tokenizer, t, chat_template=True) for t in texts]
    eos = set() if args.ignore_eos else set(tokenizer.eos_token_ids)

    draft = None
    if args.draft_model:
        draft, draft_tokenizer, _ = load_backbone(args.draft_model)
        if draft_tokenizer.encode("Hello, world! 123") != tokenizer.encode("Hello, world! 123"):
            raise ValueError("the draft model's tokenizer differs from the model's")

    trees, skipped = [], []
    requested = [t.strip() for t in args.trees.split(",") if t.strip()]
    for name in requested:
        (trees if tree_supported(name, model) else skipped).append(name)
    if skipped:
        log(f"skipping trees this version cannot resolve: {', '.join(skipped)}")
    oracle_trees = []
    if args.oracle:
        oracle_trees = (
            [t.strip() for t in args.oracle_trees.split(",") if t.strip()]
            if args.oracle_trees
            else [f"chain-{min(model.num_heads, 5)}"]
        )
    compare = {}  # label (the folder's name, numbered when two share one) -> model
    for i, folder in enumerate(args.compare_heads):
        label = Path(folder).name if Path(folder).name not in compare else f"{Path(folder).name}#{i}"
        other = medusa_model(model.backbone, load_heads(resolve_heads_path(folder)))
        compare[label] = (other, [t for t in requested if tree_supported(t, other)])
    methods = make_methods(trees, model, draft is not None, args.num_draft_tokens,
                           oracle_trees, args.lookup, compare)

    curve = None
    sizes = [int(s) for s in args.verify_sizes.split(",") if s.strip()]
    if sizes:
        curve = verify_cost_record(model, sizes, repeats=args.verify_repeats)
        log("verify cost: " + ", ".join(f"{k}:{v:.2f}x" for k, v in curve["relative"].items()))
        for method in methods:  # lookup sizes its branches for this machine, as loaded now
            # Fastest repeats: other processes only ever add time (medians were
            # not even monotone at load 15: 4 tokens 0.75x, 16 tokens 11x).
            method.lookup_cost = curve["relative_min"] if method.lookup else None

    run_methods(methods, model, draft, prompts, args.max_tokens, eos, args.num_draft_tokens,
                profile=not args.no_profile, log=log)
    baseline = methods[0]
    heads_cfg, context = model.heads.args, is_context(model.heads)
    return {
        "schema": SCHEMA,
        "environment": env,
        "config": {
            "model": args.model or "smollm2 (embedded SmolLM2-135M-Instruct)",
            "heads": args.medusa or _heads_label(args.model),
            "num_heads": model.num_heads,
            "heads_kind": "context" if context else "medusa",  # context: an EAGLE-style drafter
            "compare_heads": {label: {"path": d, "kind": "context" if is_context(m.heads)
                                      else "medusa", "num_heads": m.num_heads, "trees": t}
                              for (label, (m, t)), d in zip(compare.items(), args.compare_heads)},
            "heads_layers": 1 if context else heads_cfg.num_layers,
            "heads_shared_lm_head": heads_cfg.shared_lm_head,
            "dtype": dtype_of(model.backbone),
            "draft_model": args.draft_model,
            "num_draft_tokens": args.num_draft_tokens if draft is not None else None,
            "trees": trees,
            "trees_skipped": skipped,
            "oracle_trees": oracle_trees,
            "lookup": args.lookup,
            "lookup_budget_curve": ("measured (verify_cost.relative_min)" if curve else
                                    "lookup.CPU_VERIFY_COST") if args.lookup else None,
            "prompt_source": args.prompts or ("built-in chat+story" if chat else "built-in stories"),
            "chat_template": chat,
            "num_prompts": len(prompts),
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            "profiled": not args.no_profile,
        },
        "prompts": [{"prompt": t, "prompt_tokens": len(p)} for t, p in zip(texts, prompts)],
        "verify_cost": curve,
        "methods": [summarize(m, baseline) for m in methods],
    }


def _heads_label(model_arg: Optional[str]) -> str:
    name = EMBEDDED_DEFAULT if model_arg is None else Path(model_arg).stem.lower()
    if name not in SHIPPED_HEADS and model_arg is not None:
        name = Path(model_arg).name.lower()
    path = shipped_heads(name)
    return f"shipped ({path.name})" if path else "untrained (random)"


def main(argv=None):
    run_cli(_main, argv)


def _main(argv):
    args = configure_parser().parse_args(argv)
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # say so before the long run
            raise ValueError("--plot needs matplotlib: pip install 'medusa-mlx[plot]'")
    result = benchmark(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    render(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from .plot import plot_report

        print(f"wrote {plot_report(result, args.plot)}", file=sys.stderr)
    # Greedy Medusa must reproduce plain greedy output exactly; anything else is a bug.
    unequal = [
        m for m in result["methods"]
        if m["kind"] in ("medusa", "oracle", "lookup") and m["output_equal"] is False
    ]
    return 2 if unequal else 0


if __name__ == "__main__":
    main()
