"""``--backbone-out``: convert a Medusa-2 full model's backbone with ``mlx_lm.convert``.

mlx-lm loads weights strictly, so the ``medusa_head.*`` tensors must go first: we write
a backbone-only copy of the model folder (safetensors shards, config, tokenizer files)
into a temp folder and hand that to ``mlx_lm.convert``. Only safetensors models are
handled; torch ``.bin`` full models are refused.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import mlx.core as mx

from .output import check_output
from .formats import FULL_MODEL_PREFIX, Source
from .tensor_files import ConversionError, is_safetensors

# Files of a model folder that are neither weights nor the shard index.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")


def check_backbone_request(model_dir: Path, source: Source, output: Path, force: bool) -> None:
    """Fail before anything is written when --backbone-out cannot be honoured."""
    if source.format != "medusa2-full":
        raise ConversionError("--backbone-out only applies to Medusa-2 full models")
    if not model_dir.is_dir():
        raise ConversionError("--backbone-out needs the whole model folder, not one file")
    files = source.tensors.files
    if not all(is_safetensors(f) for f in files):
        raise ConversionError("--backbone-out supports safetensors models only")
    check_output(output, force)


def backbone_writer(model_dir: Path, source: Source, output: Path,
                    dtype: str) -> Callable[[Path], None]:
    """``write(folder)``: the backbone converted by mlx_lm.convert into ``folder`` (the
    caller commits it together with the heads, see ``output.write_outputs``)."""
    return lambda folder: _convert_backbone(model_dir, source, output, dtype, folder)


def _convert_backbone(model_dir: Path, source: Source, output: Path, dtype: str,
                      folder: Path) -> None:
    from mlx_lm.convert import convert as mlx_lm_convert

    files = source.tensors.files
    prefix = f".{output.name}.staging-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=output.parent) as staging:
        staging = Path(staging)
        weight_map = {}
        for shard in files:
            arrays = mx.load(str(shard))
            kept = {k: v for k, v in arrays.items() if not FULL_MODEL_PREFIX.match(k)}
            if kept:
                mx.save_safetensors(str(staging / shard.name), kept, metadata={"format": "pt"})
                weight_map.update({k: shard.name for k in kept})
        index = {"metadata": {}, "weight_map": weight_map}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        for item in model_dir.iterdir():
            if item.is_file() and not item.name.endswith(SKIP_SUFFIXES):
                shutil.copy2(item, staging / item.name)

        folder.rmdir()  # mlx_lm.convert refuses to write into an existing folder
        try:
            mlx_lm_convert(str(staging), str(folder), dtype=dtype)
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RuntimeError) as e:
            # mlx-lm's own errors on a malformed model folder (its config, its tensors).
            raise ConversionError(f"mlx_lm.convert failed on the backbone: "
                                  f"{type(e).__name__}: {e}") from None
