"""Turn a converter input (local path or Hugging Face hub id) into a local path.

Hub downloads go through ``load.hub_snapshot`` (the one download path, also used
for heads folders), so the local cache, ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` work
as everywhere else. Only config and
weights files are fetched, and for full models only the shards that hold head tensors.
"""

import re
from pathlib import Path
from typing import List, Optional

from ..errors import ConversionError, MedusaError, NotFoundError
from ..load import hub_snapshot
from .formats import FULL_MODEL_PREFIX, HEADS_FILES, VLLM_BLOCK, VLLM_PROJ
from .tensor_files import read_weight_map

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
CONFIG_PATTERNS = ["*.json"]
WEIGHT_PATTERNS = ["*.safetensors", "*.pt", "pytorch_model*.bin"]
# What mlx_lm.convert needs besides weights, for --backbone-out.
TOKENIZER_PATTERNS = ["*.model", "*.tiktoken", "*.txt", "*.py"]


def resolve(source: str, revision: Optional[str] = None, with_backbone: bool = False) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not HUB_ID.match(source):
        raise ConversionError(f"no such file or folder: {source}")
    return download(source, revision, with_backbone)


def download(repo_id: str, revision: Optional[str], with_backbone: bool) -> Path:
    folder = _snapshot(repo_id, revision, CONFIG_PATTERNS + list(HEADS_FILES))
    if with_backbone:
        return _snapshot(repo_id, revision, CONFIG_PATTERNS + WEIGHT_PATTERNS + TOKENIZER_PATTERNS)
    if any((folder / name).is_file() for name in HEADS_FILES):
        return folder
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            shards = _head_shards(folder / index_name)
            if shards:
                return _snapshot(repo_id, revision, CONFIG_PATTERNS + shards)
    return _snapshot(repo_id, revision, CONFIG_PATTERNS + WEIGHT_PATTERNS)


def _head_shards(index_path: Path) -> List[str]:
    """Shards holding Medusa head tensors (a full model's backbone is not needed)."""
    try:
        weight_map = read_weight_map(index_path)
    except (MedusaError, OSError):
        return []  # open_sharded reports what is wrong with it
    heads = (FULL_MODEL_PREFIX, VLLM_BLOCK, VLLM_PROJ)
    return sorted({shard for name, shard in weight_map.items()
                   if any(p.match(name) for p in heads)})


def _snapshot(repo_id: str, revision: Optional[str], patterns: List[str]) -> Path:
    try:
        return hub_snapshot(repo_id, revision, patterns)
    except NotFoundError as e:
        raise ConversionError(str(e)) from None
