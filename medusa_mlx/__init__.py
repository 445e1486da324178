"""Medusa speculative decoding for MLX."""

import warnings

from . import blas

# Must run before mlx.core is imported anywhere (see blas.py): on Linux it makes
# MLX's CPU matmuls use OpenBLAS instead of the ~30x slower reference BLAS.
blas.preload_openblas()

__version__ = "0.1.0"

# `python -m medusa_mlx.generate` (and .chat, .bench, ...) runs a module that this
# package already imported for its public API; runpy warns about that, harmlessly.
warnings.filterwarnings(
    "ignore", message=r".*found in sys.modules after import of package 'medusa_mlx'", category=RuntimeWarning
)

from .acceptors import GreedyAcceptor, LosslessAcceptor, SamplerSettings, TypicalAcceptor, make_acceptor  # noqa: E402
from .generate import MedusaResponse, generate, medusa_generate_step, stream_generate  # noqa: E402
from .heads import HeadsArgs, MedusaHeads, load_heads, save_heads  # noqa: E402
from .load import load  # noqa: E402
from .model import MedusaModel, attach_heads  # noqa: E402
from .tree import PRESETS, Tree, build_tree  # noqa: E402

__all__ = [
    "GreedyAcceptor",
    "HeadsArgs",
    "LosslessAcceptor",
    "MedusaHeads",
    "MedusaModel",
    "MedusaResponse",
    "PRESETS",
    "SamplerSettings",
    "Tree",
    "TypicalAcceptor",
    "attach_heads",
    "build_tree",
    "generate",
    "load",
    "load_heads",
    "make_acceptor",
    "medusa_generate_step",
    "save_heads",
    "stream_generate",
]
