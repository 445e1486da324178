"""The one error style of every command-line entry point.

Bad input of any kind (a missing file, an unsupported model, arguments that do
not parse or do not fit together) ends as one ``error:`` line on stderr and
exit code 1, never a traceback and never argparse's usage-plus-exit-2.
"""

import argparse
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .errors import MedusaError, UsageError

Main = Callable[[Optional[Sequence[str]]], Optional[int]]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise :class:`UsageError`, so
    ``run_cli`` reports them like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_cli(main: Main, argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run ``main(argv)`` and exit with its return code (0 for None); a user
    error becomes one ``error:`` line and exit code 1, Ctrl-C exit code 130."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (MedusaError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 1
    sys.exit(code or 0)
