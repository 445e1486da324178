"""The package's typed errors, all under :class:`MedusaError`.

Each one is a problem the user can fix (bad input, an unsupported model, a lost
peer) and carries a one-line reason: ``cli.run_cli`` prints it as a single
``error:`` line and exits 1, so a caller that wants every medusa-mlx failure
catches ``MedusaError``. The extra built-in bases (``ValueError``,
``RuntimeError``) keep ``except ValueError`` in existing callers working.
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


class TorchPickleError(ConversionError, ValueError):
    """The file cannot be read as a torch checkpoint."""


class UnsafeCheckpointError(TorchPickleError):
    """The pickle names a global outside the allow-list (it could run code)."""


class UnsupportedModelError(MedusaError, ValueError):
    """The backbone cannot be verified with a tree (one-line reason)."""


class ContextLengthError(MedusaError, ValueError):
    """The prompt (plus what is asked for) does not fit the model's context."""


class DistributedError(MedusaError, RuntimeError):
    """A multi-rank run cannot go on (peer lost, ranks diverged); one-line reason."""
