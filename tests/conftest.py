import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared/ folder (next to the repo), or $MEDUSA_SHARED."""
    path = Path(os.environ.get("MEDUSA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared folder not found at {path} (set MEDUSA_SHARED)")
    return path
