"""Uniform access to the tensors of a checkpoint, whatever files hold them.

A :class:`TensorFiles` lists tensor names cheaply (safetensors headers, or the torch
pickle without its storages) and loads only the tensors asked for, so that pulling
Medusa heads out of a multi-gigabyte full model does not read the backbone.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import mlx.core as mx

from ..errors import CheckpointError, ConfigError, ConversionError  # noqa: F401 (re-export)
from ..safe_files import inside, read_json, read_safetensors_header, regular_file
from .torch_pickle import load_torch_checkpoint


def is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def safetensors_names(path: Path) -> List[str]:
    """Tensor names from a safetensors header (checked against the file size), without
    reading any tensor data."""
    return list(read_safetensors_header(path))


def load_safetensors(path: Path, wanted: List[str]) -> Dict[str, mx.array]:
    """``wanted`` tensors of a safetensors file; MLX reads it only after its header has
    been checked entry by entry against the file size."""
    read_safetensors_header(path)
    try:
        arrays = mx.load(str(path))
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    return {k: arrays[k] for k in wanted if k in arrays}


def _load_torch(path: Path, keep: Callable[[str], bool]) -> Dict[str, mx.array]:
    loaded = load_torch_checkpoint(path, keep=keep)
    out = {}
    for name, value in loaded.items():
        if not hasattr(value, "dtype"):
            raise ConversionError(f"{path}: entry {name!r} is not a tensor")
        out[name] = mx.array(value)
    return out


@dataclass
class TensorFiles:
    """Tensor names mapped to the file that holds them."""

    location: Dict[str, Path] = field(default_factory=dict)

    @property
    def files(self) -> List[Path]:
        return sorted(set(self.location.values()))

    def names(self) -> List[str]:
        return list(self.location)

    def load(self, wanted: List[str]) -> Dict[str, mx.array]:
        """Load exactly ``wanted`` (values keep their stored dtype)."""
        by_file: Dict[Path, List[str]] = {}
        for name in wanted:
            by_file.setdefault(self.location[name], []).append(name)
        out: Dict[str, mx.array] = {}
        for path, names in by_file.items():
            if not path.exists():
                raise ConversionError(f"shard {path} is missing")
            regular_file(path, "shard")
            if is_safetensors(path):
                out.update(load_safetensors(path, names))
            else:
                keep = set(names)
                out.update(_load_torch(path, keep.__contains__))
        missing = [n for n in wanted if n not in out]
        if missing:
            raise ConversionError(f"tensor {missing[0]!r} is missing from its file")
        return out


def open_tensor_file(path: Path) -> TensorFiles:
    if is_safetensors(path):
        names = safetensors_names(path)
    else:
        names = []

        def record(name):
            names.append(name)
            return False  # only list names here; storages are not read

        load_torch_checkpoint(path, keep=record)
    return TensorFiles({name: path for name in names})


def open_sharded(index_path: Path) -> TensorFiles:
    """``*.index.json`` (safetensors or torch shards) -> names mapped to their shard.
    Shard names must stay inside the index's folder."""
    weight_map = read_weight_map(index_path)
    # Shards are checked when loaded: a hub download may fetch only those it needs.
    return TensorFiles({name: inside(index_path.parent, shard, f"shard of {index_path.name}")
                        for name, shard in weight_map.items()})


def read_weight_map(index_path: Path) -> Dict[str, str]:
    """The ``weight_map`` of a shard index: tensor name -> shard file name."""
    index = read_json(index_path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(f"{index_path} is not a shard index (weight_map must map tensor "
                          "names to file names)")
    return weight_map
