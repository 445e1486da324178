"""``python chat.py`` / ``medusa-chat`` / ``python -m medusa_mlx chat``: parse
the arguments and start the terminal chat (``ui.run``)."""

from argparse import RawDescriptionHelpFormatter

from ..cli import ArgumentParser, add_model_arguments, run_cli
from ..errors import UsageError
from .ui import run


def configure_parser():
    parser = ArgumentParser(
        prog="chat.py",
        description="Chat in the terminal with Medusa speculative decoding; a live line "
        "shows how many tokens each step accepted and the speed. Greedy: answers are "
        "exactly what plain decoding would say, only faster.",
        epilog="examples:\n"
        "  python chat.py\n"
        "  echo 'What is the capital of France?' | python chat.py --max-tokens 40\n"
        "  python chat.py --model mlx-community/Qwen2.5-0.5B-Instruct-bf16 --medusa ./my-heads",
        formatter_class=RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens (default 256)")
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy, token-identical to plain decoding)")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling threshold (0: off)")
    parser.add_argument("--accept", default="lossless", choices=["lossless", "typical"], help="how Medusa accepts sampled tokens: lossless (same distribution as plain sampling, default) or typical (faster, not exact)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--no-medusa", action="store_true", help="plain mlx-lm decoding (same display), to compare")
    parser.add_argument("--calibrate", action="store_true", help="measure plain decoding speed at start, so the speed-up shows at once")
    return parser


def main(argv=None) -> None:
    run_cli(_main, argv)


def _main(argv) -> int:
    args = configure_parser().parse_args(argv)
    if args.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if not args.temp >= 0:
        raise UsageError(f"--temp {args.temp} must be 0 (greedy) or more")
    if not 0 <= args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p} must be between 0 and 1")
    return run(args)
