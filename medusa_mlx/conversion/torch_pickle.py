"""Read PyTorch ``.pt`` / ``.bin`` checkpoints without torch and without running pickled code.

A torch checkpoint is a pickle whose tensors point at raw storages kept next to it:

* zip format (torch >= 1.6): ``<folder>/data.pkl`` plus ``<folder>/data/<key>`` members;
* legacy format: five pickles in a row (magic number, protocol, sys_info, the object,
  the storage-key list), then each storage as int64 numel + raw bytes, in key-list order.

Pickle can call any importable function, so the unpickler below resolves only an
explicit allow-list of globals to inert Python stand-ins and refuses everything else
before it can be called. Tensors come back as contiguous numpy arrays (bfloat16 is
widened to float32, which is exact).

Allowed globals are not enough on their own (``tests/test_hostile_inputs.py`` has the
cases): a ``BUILD`` on an allowed global mutates it for every later load, a tuple
``(t, t)`` nested 64 times costs 2^64 to hash as a dict key, ``[x, x]`` nested 40
times is a tree of 2^40 references, and a tensor can claim any size over a tiny
storage. So the pure-Python unpickler is used with its dangerous opcodes replaced
(``BUILD`` only on state dicts, dict keys only scalars or flat tuples, no protocol-5
buffers or extension codes); walkers over the result keep visited sets, refuse cycles
and nest at most ``MAX_DEPTH`` deep; every count, size, stride and offset is checked
against the storage, and every storage against the bytes the file actually holds, before
anything is allocated. Reading is thus linear in the file size: the output never holds
more elements than ``OUTPUT_BUDGET`` times the storages' own.
"""

import io
import pickle
import struct
import zipfile
import zlib
from math import prod
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import TorchPickleError, UnsafeCheckpointError
from ..safe_files import is_int, regular_file
from .torch_unpickler import (  # noqa: F401  (re-exported: tests and callers use them)
    ALLOWED_GLOBALS, STORAGE_TYPES, BoundedReader, RestrictedUnpickler, Storage, StorageType,
    TensorRef,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# A state_dict nests 3 deep (dict -> tensor -> size tuple); optimizer states ~6.
MAX_DEPTH = 64
# data.pkl of a 7B model with ~300 tensors is ~30 KB; of a 405B model ~1 MB.
MAX_PICKLE_BYTES = 256 << 20
# Tensors may share a storage (tied weights, views): together they may hold at most
# this many times the elements their storages hold, plus a little.
OUTPUT_BUDGET = 4


# Every way a malformed pickle or archive can fail once globals are restricted.
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError,
                 IndexError, AttributeError, struct.error, zipfile.BadZipFile, OverflowError,
                 MemoryError, RecursionError, zlib.error, NotImplementedError)


def load_torch_checkpoint(path, keep: Optional[Callable[[str], bool]] = None) -> dict:
    """Read a torch checkpoint into ``{name: numpy array}``.

    ``keep(name)`` limits which top-level entries are materialised (for huge files where
    only a few tensors matter). Non-tensor values of kept entries are returned as is."""
    path = regular_file(path, "torch checkpoint")
    try:
        if zipfile.is_zipfile(path):
            obj, budget = _load_zip(path, keep)
        else:
            obj, budget = _load_legacy(path, keep)
        return _materialise(obj, [OUTPUT_BUDGET * budget + (1 << 20)])
    except UnsafeCheckpointError:
        raise
    except TorchPickleError as e:
        raise TorchPickleError(f"{path}: {e}") from None
    except _PARSE_ERRORS as e:
        raise TorchPickleError(
            f"{path} is truncated or not a torch checkpoint ({str(e) or type(e).__name__})"
        ) from None


# --- zip format --------------------------------------------------------------------------

def _read_member(archive: zipfile.ZipFile, name: str, size_limit: int,
                 exact: Optional[int] = None) -> bytes:
    """A member's bytes, refusing encryption and exotic compression before reading, and
    never inflating more than ``size_limit`` (or ``exact``) bytes whatever it claims."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise TorchPickleError(f"zip member {name} is missing") from None
    if info.flag_bits & 0x1:
        raise TorchPickleError(f"zip member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise TorchPickleError(f"zip member {name} uses compression method {info.compress_type}")
    limit = exact if exact is not None else size_limit
    if info.file_size > limit or (exact is not None and info.file_size != exact):
        raise TorchPickleError(f"zip member {name} holds {info.file_size} bytes, expected "
                              f"{'exactly' if exact is not None else 'at most'} {limit}")
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise TorchPickleError(f"zip member {name} is corrupt ({e})") from None
    if len(data) != info.file_size:
        raise TorchPickleError(f"zip member {name} inflates to {len(data)}+ bytes, not "
                              f"the {info.file_size} it declares")
    return data


def _load_zip(path: Path, keep):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchPickleError("zip file without exactly one data.pkl (not a torch checkpoint)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = _read_member(archive, prefix + "byteorder", 16).decode(
                "ascii", errors="replace").strip()
        if byteorder not in ("little", "big"):
            raise TorchPickleError(f"unknown byteorder {byteorder!r:.20}")
        storages: Dict[str, Storage] = {}

        def storage_from_id(pid):
            _, storage_type, key, _location, numel = pid[:5]
            if key not in storages:
                storages[key] = Storage(storage_type, key, numel)
            elif storages[key].numel != numel or storages[key].storage_type != storage_type:
                raise TorchPickleError(f"storage {key} is described twice, differently")
            return storages[key]

        data = _read_member(archive, pickles[0], MAX_PICKLE_BYTES)
        obj = _select(RestrictedUnpickler(io.BytesIO(data), str(path), storage_from_id).load(),
                      keep)
        # Read storage bytes only now (the pickle has been fully checked), and only for
        # the entries that were asked for.
        budget = 0
        for storage in _storages_in(obj):
            nbytes = storage.numel * storage.storage_type.itemsize
            raw = _read_member(archive, f"{prefix}data/{storage.key}", nbytes, exact=nbytes)
            storage.data = _decode(raw, storage, byteorder)
            budget += storage.numel
    return obj, budget


# --- legacy (torch < 1.6, or _use_new_zipfile_serialization=False) --------------------------

def _load_legacy(path: Path, keep):
    size = path.stat().st_size
    with open(path, "rb") as raw_file:
        f = BoundedReader(raw_file, size)

        def next_pickle(storage_from_id=None):
            return RestrictedUnpickler(f, str(path), storage_from_id or _no_storage).load()

        try:
            magic = next_pickle()
        except UnsafeCheckpointError:
            raise
        except (TorchPickleError, *_PARSE_ERRORS):
            magic = None
        if magic != LEGACY_MAGIC:
            raise TorchPickleError("neither a zip archive nor a legacy torch file (no magic "
                                  "number): truncated or not a torch checkpoint")
        if next_pickle() != LEGACY_PROTOCOL:
            raise TorchPickleError("unsupported legacy torch protocol version")
        sys_info = next_pickle()
        if not isinstance(sys_info, dict):
            raise TorchPickleError("legacy sys_info is not a dict")
        byteorder = "little" if sys_info.get("little_endian", True) else "big"

        storages: Dict[str, Storage] = {}
        views = []  # (view_key, base_key, offset, size): storage slices in very old files

        def storage_from_id(pid):
            _, storage_type, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            if key not in storages:
                storages[key] = Storage(storage_type, key, numel)
            if view is None:
                return storages[key]
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                    and is_int(view[1]) and is_int(view[2])):
                raise TorchPickleError(f"storage view {view!r:.80} is not (key, offset, size)")
            view_key, offset, view_size = view
            if view_key not in storages:
                storages[view_key] = Storage(storage_type, view_key, view_size)
                views.append((view_key, key, offset, view_size))
            return storages[view_key]

        obj = next_pickle(storage_from_id)
        keys = next_pickle()
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise TorchPickleError("legacy storage key list is not a list of names")
        endian = "<" if byteorder == "little" else ">"
        budget = 0
        for key in keys:
            if key not in storages:
                raise TorchPickleError(f"storage {key!r:.40} is listed but never used")
            storage = storages[key]
            header = f.read(8)
            if len(header) < 8:
                raise TorchPickleError("storage data ends early")
            (numel,) = struct.unpack(endian + "q", header)
            nbytes = numel * storage.storage_type.itemsize
            if numel < 0 or nbytes > f.remaining():
                raise TorchPickleError(f"storage {key} claims {numel} elements, more than "
                                      "the file holds")
            storage.numel = numel
            storage.data = _decode(f.read(nbytes), storage, byteorder)
            budget += numel
        for view_key, base_key, offset, view_size in views:
            base = storages[base_key].data
            if base is None or offset < 0 or view_size < 0 or offset + view_size > base.size:
                raise TorchPickleError("storage view outside its storage")
            storages[view_key].data = base[offset: offset + view_size]
    return _select(obj, keep), budget


def _no_storage(pid):
    raise TorchPickleError("storage reference in a header pickle")


# --- bytes -> arrays --------------------------------------------------------------------------

def _decode(raw: bytes, storage: Storage, byteorder: str) -> np.ndarray:
    st = storage.storage_type
    endian = "<" if byteorder == "little" else ">"
    if len(raw) != storage.numel * st.itemsize:
        raise TorchPickleError(
            f"storage {storage.key} has {len(raw)} bytes, expected {storage.numel * st.itemsize}"
        )
    if st.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=endian + "u2").astype(np.uint32)
        # bfloat16 is the high half of a float32: shifting it back up is exact.
        return (bits << 16).view(np.float32)
    dtype = np.dtype(st.dtype).newbyteorder(endian) if np.dtype(st.dtype).itemsize > 1 \
        else np.dtype(st.dtype)
    return np.frombuffer(raw, dtype=dtype).astype(np.dtype(st.dtype).newbyteorder("="))


def _to_array(ref: TensorRef, budget: list) -> np.ndarray:
    data = ref.storage.data
    if data is None:
        raise TorchPickleError(f"storage {ref.storage.key} has no data")
    numel = prod(ref.size)
    if numel == 0:
        return np.zeros(ref.size, dtype=data.dtype)
    # as_strided does no bounds check: make sure the view stays inside the storage.
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= data.size:
        raise TorchPickleError(f"tensor of size {ref.size} reaches past the end of storage "
                              f"{ref.storage.key} ({data.size} elements)")
    if numel > data.size:
        raise TorchPickleError(f"tensor of size {ref.size} repeats the {data.size} elements of "
                              f"storage {ref.storage.key} (expanded views are not read)")
    budget[0] -= numel
    if budget[0] < 0:
        raise TorchPickleError("its tensors claim far more elements than its storages hold")
    base = data[ref.offset:]
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(base, shape=ref.size, strides=strides, writeable=False)
    return np.ascontiguousarray(view).copy()


def _select(obj, keep):
    if keep is None or not isinstance(obj, dict):
        return obj
    return {k: v for k, v in obj.items() if keep(str(k))}


def _children(item) -> list:
    if isinstance(item, dict):
        return list(item.values())
    if isinstance(item, (list, tuple)):
        return list(item)
    return []


def _storages_in(obj) -> List[Storage]:
    """Each storage once, visiting each shared object once (``[x, x]`` nested 40 deep
    is 40 objects, not 2^40 paths)."""
    found: Dict[int, Storage] = {}
    seen = set()
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        if depth > MAX_DEPTH:
            raise TorchPickleError(f"containers nested more than {MAX_DEPTH} deep")
        seen.add(id(item))
        if isinstance(item, TensorRef):
            found[id(item.storage)] = item.storage
        else:
            stack.extend((child, depth + 1) for child in _children(item))
    return list(found.values())


def _materialise(obj, budget: list, memo: Optional[dict] = None, active: Optional[set] = None,
                 depth: int = 0):
    """Tensors -> arrays in a copy of the structure; shared objects stay shared (built
    once), a container that contains itself is refused."""
    memo = {} if memo is None else memo
    active = set() if active is None else active
    if id(obj) in memo:
        return memo[id(obj)]
    if depth > MAX_DEPTH:
        raise TorchPickleError(f"containers nested more than {MAX_DEPTH} deep")
    if isinstance(obj, TensorRef):
        out = _to_array(obj, budget)
    elif isinstance(obj, (dict, list, tuple)):
        if id(obj) in active:
            raise TorchPickleError("the checkpoint contains itself (a reference cycle)")
        active.add(id(obj))
        if isinstance(obj, dict):
            out = {k: _materialise(v, budget, memo, active, depth + 1) for k, v in obj.items()}
        else:
            out = type(obj)(_materialise(v, budget, memo, active, depth + 1) for v in obj)
        active.discard(id(obj))
    else:
        return obj
    memo[id(obj)] = out
    return out
