"""blas.py: which BLAS MLX's CPU matmuls use, and the OpenBLAS preload."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medusa_mlx.blas import blas_info, find_openblas

REPO = Path(__file__).resolve().parents[1]


def test_blas_info_reports_a_library():
    info = blas_info()
    assert isinstance(info, dict) and "library" in info


def run_fresh_python(code: str, **env) -> str:
    """Last word printed by `code` in a new interpreter (mlx not yet imported)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MEDUSA_NO_OPENBLAS", "LD_PRELOAD")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**clean, **env},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or find_openblas() is None, reason="needs Linux + OpenBLAS")
def test_preload_openblas_makes_mlx_use_it_in_a_fresh_process():
    code = (
        "from medusa_mlx.blas import preload_openblas, blas_info\n"
        "preload_openblas()\n"
        "import mlx.core as mx\n"
        "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))\n"
        "print(blas_info()['library'])"
    )
    assert run_fresh_python(code) == "openblas"
    assert run_fresh_python(code, MEDUSA_NO_OPENBLAS="1") == "reference"
