import os
import sys

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before anything imports mlx)
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repository (override with MEDUSA_SHARED)."""
    path = Path(os.environ.get("MEDUSA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path}")
    return path
