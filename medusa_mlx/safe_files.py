"""Reading files that may be hostile: regular files only, names kept inside their folder,
JSON and safetensors headers checked against what the file can hold.

Why each rule exists (all found by ``tests/test_hostile_inputs.py``):

* A FIFO named ``*.pt`` blocks a reader forever and ``/dev/zero`` never ends, so only
  regular files are opened (checked with ``stat``, which does not block).
* A shard index or a folder entry may name ``../x``, an absolute path or a link that
  leads elsewhere; reading it would copy a file the user never meant to convert into
  the output. Names must stay inside the folder; a link may only point into the
  folder or, in a Hugging Face cache snapshot (``snapshots/<rev>/``), into the
  repository's ``blobs/`` folder, where the hub keeps the real files.
* ``json`` raises ``RecursionError`` on deeply nested input and accepts any top-level
  type, so parsing goes through :func:`parse_json`.
* A safetensors header can claim shapes and offsets far beyond the file; MLX would
  trust them. :func:`read_safetensors_header` checks every entry first.
"""

import json
import os
import stat
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path, PurePosixPath
from typing import Dict, Type

from .errors import CheckpointError, ConfigError, UnsafePathError

# Sizes a model file or config may claim: real vocabularies reach 262k tokens (Gemma 3),
# hidden sizes 16k (Llama 3.1 405B); beyond these a claim is refused before anything
# is allocated from it.
MAX_VOCAB = 1 << 20
MAX_HIDDEN = 1 << 16
# Real configs and shard indexes are a few KB to ~1 MB (a 405B model's index: 0.1 MB).
MAX_JSON_BYTES = 64 << 20
# Real safetensors headers are ~100 bytes per tensor (a 70B model: ~100 KB).
MAX_SAFETENSORS_HEADER = 100 << 20
# Tensors of real models have rank <= 5; torch's own limit is 64.
MAX_RANK = 8

SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


def is_int(value) -> bool:
    """A JSON/pickle integer (``bool`` is an int subclass in Python, not here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(config: dict, key: str, low: int, high: int, what: str,
              optional: bool = False) -> None:
    """``config[key]`` is an integer in [low, high] (or absent, when ``optional``);
    else a ConfigError naming ``what`` config and the key."""
    value = config.get(key)
    if value is None and optional:
        return
    if not is_int(value) or not low <= value <= high:
        raise ConfigError(f"{what} config {key} is {value!r:.40}, expected an integer "
                          f"from {low} to {high}")


def regular_file(path, what: str = "file") -> Path:
    """``path`` if it is a regular file (links followed); FIFOs, devices and folders
    are refused without being opened."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) \
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
        raise UnsafePathError(f"{what} {path} is {kind}, not a regular file")
    return path


def _allowed_roots(folder: Path) -> list:
    root = folder.resolve()
    roots = [root]
    if root.parent.name == "snapshots":  # huggingface_hub cache: snapshots/<rev>/x -> blobs/
        roots.append(root.parent.parent / "blobs")
    return roots


def inside(folder, name, what: str = "file") -> Path:
    """``folder / name`` for a ``name`` read from a config or index (or found in the
    folder): relative, without ``..``, and not a link that leads outside the folder."""
    folder = Path(folder)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what}: file name {name!r:.80} is not a string")
    parts = PurePosixPath(name)
    if parts.is_absolute() or ".." in parts.parts or "\\" in name:
        raise UnsafePathError(f"{what} {name!r:.200} is outside the folder {folder}")
    path = folder / parts
    real = path.resolve()
    if not any(real == r or r in real.parents for r in _allowed_roots(folder)):
        raise UnsafePathError(f"{what} {path} is a link to {real}, outside the folder {folder}")
    return path


def parse_json(raw: bytes, what: str, error: Type[Exception] = ConfigError,
               expect: type = dict):
    """JSON of the type ``expect``; anything else (bad UTF-8, bad syntax, nesting deep
    enough to exhaust the recursion limit, another top-level type) raises ``error``."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a real file") from None
    except ValueError as e:
        raise error(f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, expect):
        raise error(f"{what} holds a JSON {type(value).__name__}, expected a "
                    f"{'dict' if expect is dict else expect.__name__}")
    return value


def read_json(path, what: str = "JSON file", error: Type[Exception] = ConfigError,
              expect: type = dict):
    """A small JSON file (a config or index), read only if it is a regular file."""
    path = regular_file(path, what)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise error(f"{what} {path} is {path.stat().st_size} bytes, more than any real config")
    return parse_json(path.read_bytes(), f"{what} {path}", error, expect)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple
    start: int  # byte offsets in the data section
    end: int


def read_safetensors_header(path) -> Dict[str, TensorInfo]:
    """Every tensor's dtype, shape and byte range, checked against the file size: each
    range lies inside the data section and holds exactly ``prod(shape) * itemsize``
    bytes. Only then may MLX read the file."""
    path = regular_file(path, "safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise CheckpointError(
                f"{path}: safetensors header length {length} is larger than the file")
        raw = f.read(length)
    header = parse_json(raw, f"{path} (safetensors header)", CheckpointError)
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":  # MLX writes null when there is none
            if entry is not None and not (isinstance(entry, dict) and all(
                    isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
            continue
        tensors[name] = _tensor_info(path, name, entry, data_size)
    return tensors


def _tensor_info(path: Path, name: str, entry, data_size: int) -> TensorInfo:
    where = f"{path}: tensor {name!r:.100}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise CheckpointError(f"{where} has unknown dtype {dtype!r:.40}")
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK
            and all(is_int(n) and n >= 0 for n in shape)):
        raise CheckpointError(
            f"{where} has shape {shape!r:.80}, expected up to {MAX_RANK} sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_int, offsets))
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise CheckpointError(
            f"{where} has data_offsets {offsets!r:.80} outside the {data_size} data bytes")
    nbytes = prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{where}: shape {shape} needs {nbytes} bytes, "
                              f"its data_offsets hold {offsets[1] - offsets[0]}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def check_tensors(weights: Path, found: dict, module) -> None:
    """``found`` (a safetensors header) holds exactly ``module``'s parameters, in
    their shapes; else one ConfigError naming the first difference."""
    from mlx.utils import tree_flatten

    expected = {name: tuple(p.shape) for name, p in tree_flatten(module.parameters())}
    for name, shape in expected.items():
        if name not in found:
            raise ConfigError(f"{weights} has no tensor {name} (the config implies it)")
        if tuple(found[name].shape) != shape:
            raise ConfigError(f"{weights}: {name} has shape {list(found[name].shape)}, "
                              f"the config implies {list(shape)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ConfigError(f"{weights} has tensor {extra[0]!r:.80}, which the config does not "
                          "describe")
