"""cli.py and __main__.py: one error style for every command, one dispatcher."""

import subprocess
import sys
from pathlib import Path

import pytest

from medusa_mlx.__main__ import COMMANDS
from medusa_mlx.cli import ArgumentParser, run_cli
from medusa_mlx.errors import ConversionError, MedusaError, UsageError

REPO = Path(__file__).resolve().parents[1]


def run_main(main, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        run_cli(main, argv)
    return done.value.code, capsys.readouterr().err


def test_user_errors_become_one_error_line_and_exit_1(capsys):
    def fails(argv):
        raise ConversionError("bad\ninput  file")

    assert run_main(fails, [], capsys) == (1, "error: bad input file\n")


def test_parser_errors_are_usage_errors_not_exit_2(capsys):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(UsageError, match="--n"):
        parser.parse_args([])
    code, err = run_main(lambda argv: parser.parse_args(argv) and 0, ["--n", "x"], capsys)
    assert code == 1 and err.startswith("error: argument --n") and err.count("\n") == 1


def test_return_code_and_bugs_pass_through(capsys):
    assert run_main(lambda argv: 2, [], capsys)[0] == 2
    assert run_main(lambda argv: None, [], capsys)[0] == 0
    with pytest.raises(KeyError):  # a bug is a traceback, not a one-line "error:"
        run_cli(lambda argv: {}["x"], [])


def test_every_error_is_a_medusa_error():
    from medusa_mlx import errors

    typed = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(typed) >= 8 and all(issubclass(e, MedusaError) for e in typed)


def test_dispatcher_knows_every_command_and_refuses_others():
    assert {"chat", "convert", "generate", "bench", "train", "evaluate", "tree-search",
            "head-vocab", "server"} <= set(COMMANDS)
    run = subprocess.run([sys.executable, "-m", "medusa_mlx", "no-such-command"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("error: unknown command")


def test_dispatcher_runs_a_command_with_its_flags():
    run = subprocess.run([sys.executable, "-m", "medusa_mlx", "train", "--head-vocab", "8",
                          "--model", "m", "--data", "d", "--out", "o"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr == "error: --head-vocab needs --shared-lm-head\n"


@pytest.mark.parametrize("module", ["medusa_mlx.chat.cli", "medusa_mlx.server.cli",
                                    "medusa_mlx.generate"])
def test_prompt_lookup_is_on_by_default_in_the_apps_and_can_be_turned_off(module):
    """The benchmark's built-in prompts never ran slower with lookup (README, Prompt
    lookup), so the apps draft from the text by default; --no-lookup turns it off."""
    import importlib

    parser = importlib.import_module(module).configure_parser()
    assert parser.parse_args([]).lookup is True
    assert parser.parse_args(["--no-lookup"]).lookup is False
