"""Uniform access to the tensors of a checkpoint, whatever files hold them.

A :class:`TensorFiles` lists tensor names cheaply (safetensors headers, or the torch
pickle without its storages) and loads only the tensors asked for, so that pulling
Medusa heads out of a multi-gigabyte full model does not read the backbone.
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import mlx.core as mx

from .torch_pickle import load_torch_checkpoint
from ..errors import ConversionError  # noqa: F401  (raised here; importable from here)


# An upper bound on a safetensors JSON header; real ones are far smaller.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def safetensors_names(path: Path) -> List[str]:
    """Tensor names from a safetensors header, without reading any tensor data."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than a safetensors header")
            (size,) = struct.unpack("<Q", head)
            if size > min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
                raise ValueError("header length is larger than the file")
            header = json.loads(f.read(size))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path} is not a readable safetensors file (bad header)")
    return [k for k in header if k != "__metadata__"]


def _load_safetensors(path: Path, wanted: List[str]) -> Dict[str, mx.array]:
    try:
        arrays = mx.load(str(path))
    except (RuntimeError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None
    return {k: arrays[k] for k in wanted}


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
            if is_safetensors(path):
                out.update(_load_safetensors(path, names))
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
    """``*.index.json`` (safetensors or torch shards) -> names mapped to their shard."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{index_path} is not a shard index ({e})") from None
    location = {}
    for name, shard in weight_map.items():
        # Shards are checked when loaded: a hub download may fetch only those it needs.
        location[name] = index_path.parent / shard
    return TensorFiles(location)
