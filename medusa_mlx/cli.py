"""Shared bits of the command-line entry points."""

import sys
from typing import Callable

from .distributed import DistributedError


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a user error (bad path, unsupported model, overlong prompt)
    becomes one ``error:`` line and exit code 1 instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (FileNotFoundError, ValueError, OSError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code or 0)
