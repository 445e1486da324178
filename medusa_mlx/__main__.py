"""``python -m medusa_mlx <command> [options]``: one entry point for every tool,
as ``python -m mlx_lm <command>`` is for mlx-lm's.

Each command's module is imported only when that command runs, so a command
whose optional parts are missing does not break the others.
"""

import importlib
import sys

# command -> module with a ``main(argv=None)``
COMMANDS = {
    "chat": "medusa_mlx.chat.cli",
    "convert": "medusa_mlx.conversion.convert",
    "generate": "medusa_mlx.generate",
    "bench": "medusa_mlx.bench.cli",
    "train": "medusa_mlx.training.cli",
    "evaluate": "medusa_mlx.training.evaluate",
    "tree-search": "medusa_mlx.training.tree_search",
    "head-vocab": "medusa_mlx.training.head_vocab",
    "distill": "medusa_mlx.training.distill",
    "server": "medusa_mlx.server.cli",
}


def usage() -> str:
    return "usage: python -m medusa_mlx {" + ",".join(COMMANDS) + "} [options]  (COMMAND --help for each)"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 1)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; {usage()}", file=sys.stderr)
        sys.exit(1)
    try:
        module = importlib.import_module(COMMANDS[command])
    except ModuleNotFoundError as e:
        if e.name != COMMANDS[command]:
            raise
        print(f"error: the {command} command is not part of this version of medusa-mlx", file=sys.stderr)
        sys.exit(1)
    sys.argv = [f"python -m medusa_mlx {command}"] + rest  # argparse takes its prog from argv[0]
    module.main(rest)


if __name__ == "__main__":
    main()
