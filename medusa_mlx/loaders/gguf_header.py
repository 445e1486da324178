"""Parse and check a GGUF header in Python before MLX reads the file.

MLX's GGUF reader (``mx.load``) trusts the header: tensor and key counts of 2^60, string
and array lengths beyond the file, 9-dimensional or 2^80-element tensors and offsets past
the end crashed the process (SIGSEGV/SIGABRT) or allocated what they claimed. Here
every count and length is checked against the bytes that remain before it is used, so
reading costs at most the file's own size, and every tensor's byte range must lie inside
the file. Only then is the file handed to MLX.

Format (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64
key-value count, the key-values (u64-length string key, u32 type, value), the tensor
infos (name, u32 n_dims, u64 dims, u32 ggml type, u64 offset), padding to
``general.alignment`` (default 32), then the tensor data.
"""

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Dict

from ..errors import CheckpointError
from ..safe_files import regular_file

MAGIC = b"GGUF"
VERSIONS = (2, 3)
STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
GGML_MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
# ggml type -> (elements per block, bytes per block), for the types MLX reads.
GGML_TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 30: (1, 2)}
GGML_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 30: "BF16"}


@dataclass(frozen=True)
class GGUFTensor:
    shape: tuple  # row-major, as MLX returns it (GGUF stores dims innermost first)
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: Dict[str, object]  # arrays as Python lists
    tensors: Dict[str, GGUFTensor]
    data_start: int


class _Reader:
    def __init__(self, f, size: int, path: Path):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def take(self, n: int) -> bytes:
        if n > self.size - self.pos:
            raise CheckpointError(f"{self.path}: GGUF header claims {n} bytes at offset "
                                  f"{self.pos}, past the end of the {self.size}-byte file")
        data = self.f.read(n)
        self.pos += n
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, min_bytes: int) -> int:
        """A u64 count of items taking at least ``min_bytes`` each: at most what fits."""
        n = self.unpack("<Q")
        if n * min_bytes > self.size - self.pos:
            raise CheckpointError(f"{self.path}: GGUF header claims {n} {what}, more than "
                                  "the file can hold")
        return n

    def string(self) -> str:
        data = self.take(self.count("string bytes", 1))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: GGUF string at offset {self.pos} is not "
                                  "UTF-8") from None

    def value(self, kind: int, in_array: bool = False):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY and not in_array:
            elem = self.unpack("<I")
            if elem not in SCALARS and elem != STRING:
                raise CheckpointError(f"{self.path}: GGUF array of type {elem} (arrays of "
                                      "arrays or unknown types are not supported)")
            size = 8 if elem == STRING else struct.calcsize(SCALARS[elem])
            n = self.count("array elements", size)
            if elem in SCALARS:  # one read for the whole array
                return list(struct.unpack(f"<{n}{SCALARS[elem][1]}", self.take(n * size)))
            return [self.string() for _ in range(n)]
        raise CheckpointError(f"{self.path}: unknown GGUF value type {kind}")


def read_gguf_header(path) -> GGUFHeader:
    path = regular_file(path, "GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f, size, path)
        if (r.take(4) if size >= 4 else b"") != MAGIC:
            raise CheckpointError(f"{path} is not a GGUF file (no GGUF magic)")
        version = r.unpack("<I")
        if version not in VERSIONS:
            raise CheckpointError(f"{path}: GGUF version {version} is not supported "
                                  f"({', '.join(map(str, VERSIONS))})")
        # Smallest tensor info: empty name (8) + n_dims (4) + one dim (8) + type + offset.
        n_tensors = r.unpack("<Q")
        n_keys = r.count("key-value pairs", 8 + 4 + 1)
        if n_tensors * 32 > size:
            raise CheckpointError(f"{path}: GGUF header claims {n_tensors} tensors, more "
                                  "than the file can hold")
        metadata = {}
        for _ in range(n_keys):
            key = r.string()
            metadata[key] = r.value(r.unpack("<I"))
        infos = [_tensor_info(r, path) for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise CheckpointError(f"{path}: GGUF alignment {alignment!r} is not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    tensors = {}
    for name, tensor in infos:
        if name in tensors:
            raise CheckpointError(f"{path}: GGUF tensor {name!r:.80} appears twice")
        if tensor.offset % alignment or data_start + tensor.offset + tensor.nbytes > size:
            raise CheckpointError(f"{path}: GGUF tensor {name!r:.80} lies outside the file "
                                  f"(offset {tensor.offset}, {tensor.nbytes} bytes)")
        tensors[name] = tensor
    return GGUFHeader(version, metadata, tensors, data_start)


def _tensor_info(r: _Reader, path: Path):
    name = r.string()
    n_dims = r.unpack("<I")
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise CheckpointError(f"{path}: GGUF tensor {name!r:.80} has {n_dims} dimensions "
                              f"(1 to {GGML_MAX_DIMS})")
    dims = [r.unpack("<Q") for _ in range(n_dims)]
    kind, offset = r.unpack("<I"), r.unpack("<Q")
    if kind not in GGML_TYPES:
        raise CheckpointError(f"{path}: GGUF tensor {name!r:.80} has type {kind}; supported: "
                              f"{', '.join(GGML_NAMES.values())}")
    block, block_bytes = GGML_TYPES[kind]
    if min(dims) < 1 or dims[0] % block:
        raise CheckpointError(f"{path}: GGUF tensor {name!r:.80} has dimensions {dims}")
    nbytes = prod(dims) // block * block_bytes
    return name, GGUFTensor(tuple(reversed(dims)), kind, offset, nbytes)
