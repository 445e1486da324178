"""The package's typed errors, all under :class:`MedusaError`.

Each one is a problem the user can fix (bad input, an unsupported model, a lost
peer) and carries a one-line reason: ``cli.run_cli`` prints it as a single
``error:`` line and exits 1, so a caller that wants every medusa-mlx failure
catches ``MedusaError``. The extra built-in bases (``ValueError``,
``RuntimeError``) keep ``except ValueError`` in existing callers working.

Bad input comes in families, one class each (``tests/test_hostile_inputs.py``
has cases for all of them): a malformed weights file (:class:`CheckpointError`),
a pickle that could run code (:class:`UnsafeCheckpointError`), a malformed or
out-of-range JSON config or index (:class:`ConfigError`), a path that is not a
regular file or leads out of its folder (:class:`UnsafePathError`), an output
that cannot be written (:class:`OutputError`), text input that is not text
(:class:`InputError`), arguments (:class:`UsageError`).
"""


class MedusaError(Exception):
    """Base of every error medusa-mlx raises on purpose (one-line reason)."""


class UsageError(MedusaError, ValueError):
    """Command-line arguments that do not fit together (or do not parse)."""


class NotFoundError(MedusaError, FileNotFoundError):
    """A model, heads folder or hub repository that is not there (or that the
    hub could not provide)."""


class ConversionError(MedusaError):
    """A user-facing problem with a conversion's input, options or output."""


class CheckpointError(MedusaError, ValueError):
    """A weights file (torch, safetensors, GGUF, llama2.c) is malformed, truncated,
    or claims more than it holds."""


class TorchPickleError(CheckpointError, ConversionError):
    """The file cannot be read as a torch checkpoint."""


class UnsafeCheckpointError(TorchPickleError):
    """The pickle names a global outside the allow-list (it could run code)."""


class ConfigError(MedusaError, ValueError):
    """A JSON file (heads config, model config, shard index) is malformed, of the
    wrong type, or holds a value outside its sane range."""


class UnsafePathError(MedusaError, ValueError):
    """A path is not a regular file (a FIFO, a device, a folder), or a name from a
    config or index leads outside its folder."""


class OutputError(ConversionError):
    """The output cannot be written where asked (exists, not replaceable, the write
    failed)."""


class InputError(MedusaError, ValueError):
    """Text input (stdin, a prompt) cannot be read as text."""


class UnsupportedModelError(MedusaError, ValueError):
    """The backbone cannot be verified with a tree (one-line reason)."""


class ContextLengthError(MedusaError, ValueError):
    """The prompt (plus what is asked for) does not fit the model's context."""


class DistributedError(MedusaError, RuntimeError):
    """A multi-rank run cannot go on (peer lost, ranks diverged); one-line reason."""


class Interrupted(BaseException):
    """SIGTERM arrived: unwind (temporary outputs are removed on the way out), then
    exit with 128 + the signal number. A BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` swallows it."""

    def __init__(self, signum: int, name: str):
        super().__init__(f"interrupted by {name}")
        self.signum = signum
