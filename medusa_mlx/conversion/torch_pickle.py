"""Read PyTorch ``.pt`` / ``.bin`` checkpoints without torch and without running pickled code.

A torch checkpoint is a pickle whose tensors point at raw storages kept next to it:

* zip format (torch >= 1.6): ``<folder>/data.pkl`` plus ``<folder>/data/<key>`` members;
* legacy format: five pickles in a row (magic number, protocol, sys_info, the object,
  the storage-key list), then each storage as int64 numel + raw bytes, in key-list order.

Pickle can call any importable function, so the unpickler below resolves only an
explicit allow-list of globals to inert Python stand-ins and refuses everything else
before it can be called. Tensors come back as contiguous numpy arrays (bfloat16 is
widened to float32, which is exact).
"""

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import TorchPickleError, UnsafeCheckpointError  # noqa: F401  (raised here; importable from here)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only says how to read bytes."""

    name: str
    dtype: str  # numpy dtype of one stored element ("bfloat16" is read as uint16)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


STORAGE_TYPES = {
    name: StorageType(name, dtype)
    for name, dtype in [
        ("DoubleStorage", "float64"),
        ("FloatStorage", "float32"),
        ("HalfStorage", "float16"),
        ("BFloat16Storage", "bfloat16"),
        ("LongStorage", "int64"),
        ("IntStorage", "int32"),
        ("ShortStorage", "int16"),
        ("CharStorage", "int8"),
        ("ByteStorage", "uint8"),
        ("BoolStorage", "bool"),
    ]
}

# torch.float32 etc. may appear as plain values (e.g. inside TypedStorage metadata).
DTYPE_NAMES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool",
}


@dataclass
class Storage:
    """One raw storage; ``data`` is filled in once its bytes have been read."""

    storage_type: StorageType
    key: str
    numel: int
    data: Optional[np.ndarray] = None


@dataclass
class TensorRef:
    """A tensor described by the pickle; materialised after all storages are known."""

    storage: Storage
    offset: int
    size: tuple
    stride: tuple


class StateDict(collections.OrderedDict):
    """Stand-in for ``collections.OrderedDict``.

    torch pickles ``state_dict()`` with a ``BUILD`` that sets ``_metadata``; keeping the
    state here (instead of letting pickle set arbitrary attributes) is harmless."""

    def __setstate__(self, state):
        self.pickle_state = state


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        raise TorchPickleError("tensor rebuilt from something that is not a storage")
    return TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    # An nn.Parameter is just its tensor for our purposes.
    return data


ALLOWED_GLOBALS: Dict[tuple, object] = {
    ("collections", "OrderedDict"): StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
}
ALLOWED_GLOBALS.update({("torch", name): st for name, st in STORAGE_TYPES.items()})
ALLOWED_GLOBALS.update({("torch", name): dtype for name, dtype in DTYPE_NAMES.items()})


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; storages are recorded, not read."""

    def __init__(self, file, source: str, storage_from_id: Callable[[tuple], Storage]):
        super().__init__(file)
        self.source = source
        self.storage_from_id = storage_from_id

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name} from {self.source}: only tensors and "
                "plain containers are allowed (the pickle could run code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80} in {self.source}")
        if not isinstance(pid[1], StorageType):
            raise TorchPickleError(f"unsupported storage type {pid[1]!r:.80} in {self.source}")
        return self.storage_from_id(pid)


# Every way a malformed pickle or archive can fail once globals are restricted.
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError,
                 IndexError, AttributeError, struct.error, zipfile.BadZipFile, OverflowError,
                 MemoryError, RecursionError)


def load_torch_checkpoint(path, keep: Optional[Callable[[str], bool]] = None) -> dict:
    """Read a torch checkpoint into ``{name: numpy array}``.

    ``keep(name)`` limits which top-level entries are materialised (for huge files where
    only a few tensors matter). Non-tensor values of kept entries are returned as is."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, keep)
        else:
            obj = _select(_load_legacy(path), keep)
        return _materialise(obj)
    except UnsafeCheckpointError:
        raise
    except TorchPickleError as e:
        raise TorchPickleError(f"{path}: {e}") from None
    except _PARSE_ERRORS as e:
        raise TorchPickleError(
            f"{path} is truncated or not a torch checkpoint ({e or type(e).__name__})"
        ) from None


# --- zip format --------------------------------------------------------------------------

def _load_zip(path: Path, keep):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchPickleError("zip file without exactly one data.pkl (not a torch checkpoint)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise TorchPickleError(f"unknown byteorder {byteorder!r}")
        storages: Dict[str, Storage] = {}

        def storage_from_id(pid):
            _, storage_type, key, _location, numel = pid[:5]
            if key not in storages:
                storages[key] = Storage(storage_type, str(key), int(numel))
            return storages[key]

        unpickler = RestrictedUnpickler(
            io.BytesIO(archive.read(pickles[0])), str(path), storage_from_id
        )
        obj = _select(unpickler.load(), keep)
        # Read storage bytes only now (the pickle has been fully checked), and only for
        # the entries that were asked for.
        for storage in _storages_in(obj):
            key = storage.key
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = _decode(raw, storage, byteorder)
    return obj


# --- legacy (torch < 1.6, or _use_new_zipfile_serialization=False) --------------------------

def _load_legacy(path: Path):
    with open(path, "rb") as f:
        def next_pickle(storage_from_id=None):
            return RestrictedUnpickler(f, str(path), storage_from_id or _no_storage).load()

        try:
            magic = next_pickle()
        except UnsafeCheckpointError:
            raise
        except _PARSE_ERRORS:
            magic = None
        if magic != LEGACY_MAGIC:
            # Raised as a parse error so the caller says "truncated or not a torch checkpoint".
            raise pickle.UnpicklingError("no zip central directory and no legacy magic number")
        if next_pickle() != LEGACY_PROTOCOL:
            raise TorchPickleError("unsupported legacy torch protocol version")
        sys_info = next_pickle()
        byteorder = "little" if sys_info.get("little_endian", True) else "big"

        storages: Dict[str, Storage] = {}
        views = []  # (view_key, base_key, offset, size): storage slices in very old files

        def storage_from_id(pid):
            _, storage_type, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            if key not in storages:
                storages[key] = Storage(storage_type, str(key), int(numel))
            if view is None:
                return storages[key]
            view_key, offset, view_size = view
            if view_key not in storages:
                storages[view_key] = Storage(storage_type, str(view_key), int(view_size))
                views.append((view_key, key, int(offset), int(view_size)))
            return storages[view_key]

        obj = next_pickle(storage_from_id)
        keys: List[str] = next_pickle()
        endian = "<" if byteorder == "little" else ">"
        for key in keys:
            if key not in storages:
                raise TorchPickleError(f"storage {key!r} is listed but never used")
            storage = storages[key]
            header = f.read(8)
            if len(header) < 8:
                raise EOFError("storage data ends early")
            (numel,) = struct.unpack(endian + "q", header)
            nbytes = numel * storage.storage_type.itemsize
            raw = f.read(nbytes)
            if numel < 0 or len(raw) != nbytes:
                raise EOFError("storage data ends early")
            storage.numel = numel
            storage.data = _decode(raw, storage, byteorder)
        for view_key, base_key, offset, size in views:
            base = storages[base_key].data
            if base is None or offset < 0 or offset + size > base.size:
                raise TorchPickleError("storage view outside its storage")
            storages[view_key].data = base[offset: offset + size]
    return obj


def _no_storage(pid):
    raise TorchPickleError("storage reference in a header pickle")


# --- bytes -> arrays --------------------------------------------------------------------------

def _decode(raw: bytes, storage: Storage, byteorder: str) -> np.ndarray:
    st = storage.storage_type
    endian = "<" if byteorder == "little" else ">"
    if len(raw) != storage.numel * st.itemsize:
        raise EOFError(
            f"storage {storage.key} has {len(raw)} bytes, expected {storage.numel * st.itemsize}"
        )
    if st.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=endian + "u2").astype(np.uint32)
        # bfloat16 is the high half of a float32: shifting it back up is exact.
        return (bits << 16).view(np.float32)
    dtype = np.dtype(st.dtype).newbyteorder(endian) if np.dtype(st.dtype).itemsize > 1 \
        else np.dtype(st.dtype)
    return np.frombuffer(raw, dtype=dtype).astype(np.dtype(st.dtype).newbyteorder("="))


def _to_array(ref: TensorRef) -> np.ndarray:
    data = ref.storage.data
    if data is None:
        raise TorchPickleError(f"storage {ref.storage.key} has no data")
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise TorchPickleError("negative tensor size, stride or offset")
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=data.dtype)
    # as_strided does no bounds check: make sure the view stays inside the storage.
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= data.size:
        raise TorchPickleError(f"tensor reaches past the end of storage {ref.storage.key}")
    base = data[ref.offset:]
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(base, shape=ref.size, strides=strides, writeable=False)
    return np.ascontiguousarray(view).copy()


def _select(obj, keep):
    if keep is None or not isinstance(obj, dict):
        return obj
    return {k: v for k, v in obj.items() if keep(str(k))}


def _storages_in(obj) -> List[Storage]:
    found: Dict[int, Storage] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            found[id(item.storage)] = item.storage
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return list(found.values())


def _materialise(obj):
    if isinstance(obj, TensorRef):
        return _to_array(obj)
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj
