"""Medusa speculative decoding for MLX."""

from . import blas

# Must run before mlx.core is imported anywhere (see blas.py): on Linux it makes
# MLX's CPU matmuls use OpenBLAS instead of the ~30x slower reference BLAS.
blas.preload_openblas()

__version__ = "0.1.0"

# Public name -> submodule. Imported on first use (PEP 562) so that
# ``python -m medusa_mlx.generate`` does not import its own module twice.
_EXPORTS = {
    "HeadsArgs": "heads",
    "MedusaHeads": "heads",
    "load_heads": "heads",
    "save_heads": "heads",
    "MedusaModel": "model",
    "attach_heads": "model",
    "MedusaResponse": "generate",
    "generate": "generate",
    "medusa_generate_step": "generate",
    "stream_generate": "generate",
    "load": "load",
    "GreedyAcceptor": "accept",
    "LosslessAcceptor": "sampling",
    "SamplerSettings": "sampling",
    "TypicalAcceptor": "sampling",
    "make_acceptor": "sampling",
    "PRESETS": "tree",
    "Tree": "tree",
    "build_tree": "tree",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medusa_mlx' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
