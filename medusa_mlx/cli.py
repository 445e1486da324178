"""The one error style of every command-line entry point.

Bad input of any kind (a missing file, an unsupported model, arguments that do
not parse or do not fit together) ends as one ``error:`` line on stderr and
exit code 1, never a traceback and never argparse's usage-plus-exit-2. SIGINT
and SIGTERM unwind the program (so temporary outputs are removed on the way
out) and end as one ``error:`` line with exit code 130 / 143.
"""

import argparse
import signal
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .errors import Interrupted, MedusaError, UsageError

Main = Callable[[Optional[Sequence[str]]], Optional[int]]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise :class:`UsageError`, so
    ``run_cli`` reports them like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_model_arguments(parser: argparse.ArgumentParser, drafting: bool = True) -> None:
    """``--model`` and ``--medusa``, which every decoding app takes alike; with
    ``drafting`` also ``--tree``, ``--lookup/--no-lookup`` (on by default: the
    benchmark's built-in prompts never ran slower with it, README "Prompt lookup")
    and ``--no-heads``."""
    from .tree import PRESETS

    parser.add_argument("--model", default=None, help="mlx-lm folder, hub id, .gguf or llama2.c "
                        ".bin (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--medusa", default=None, help="Medusa heads or context drafter folder, or "
                        "hub id (default: the heads shipped for the model, else untrained)")
    if not drafting:
        return
    parser.add_argument("--tree", default="auto", help="candidate tree: auto (saved with the heads; "
                        f"default), {', '.join(PRESETS)}")
    parser.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=True,
                        help="also draft from the text itself: prompt, conversation, answer so far "
                             "(prompt lookup; exact; default on)")
    parser.add_argument("--no-heads", action="store_true",
                        help="no Medusa heads: prompt lookup alone (any supported model)")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _terminate(signum, frame):
    raise Interrupted(signum, signal.Signals(signum).name)


def run_cli(main: Main, argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run ``main(argv)`` and exit with its return code (0 for None); a user
    error becomes one ``error:`` line and exit code 1, Ctrl-C 130, SIGTERM 143."""
    signal.signal(signal.SIGTERM, _terminate)
    # Python leaves SIGINT ignored when it started ignored (a background job); a
    # command should stop on Ctrl-C either way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("\nerror: interrupted (SIGINT)", file=sys.stderr)
        code = 128 + signal.SIGINT
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        code = 128 + e.signum
    except (MedusaError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 1
    sys.exit(code or 0)
