"""The unpickler behind ``torch_pickle``: only inert stand-ins for an allow-list of
globals, and none of the opcodes that make a tiny pickle expensive or mutate shared state.

Why each replaced opcode matters (cases in ``tests/hostile_cases.py``): ``BUILD`` on an
allowed global would modify it for every later load in the process (``FloatStorage``
read as int32); a dict key ``(t, t)`` nested 64 times costs 2^64 to hash; protocol-5
buffers allocate whatever length they claim; extension codes bypass ``find_class``.
The pure-Python ``pickle._Unpickler`` is used because its dispatch table can be
replaced; its cost is linear in the pickle (a 30 KB data.pkl takes ~10 ms).
"""

import pickle
from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np

from ..errors import TorchPickleError, UnsafeCheckpointError
from ..safe_files import is_int

# Real tensors have rank <= 5 (torch allows 64).
MAX_RANK = 16
# Flat tuples as dict keys (torch's own files only use strings).
MAX_KEY_TUPLE = 16


@dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only says how to read bytes."""

    name: str
    dtype: str  # numpy dtype of one stored element ("bfloat16" is read as uint16)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def __setstate__(self, state):
        raise TorchPickleError(f"the pickle tries to modify torch.{self.name}")


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


class Storage:
    """One raw storage; ``data`` is filled in once its bytes have been read."""

    __slots__ = ("storage_type", "key", "numel", "data")

    def __init__(self, storage_type: StorageType, key: str, numel: int):
        self.storage_type, self.key, self.numel, self.data = storage_type, key, numel, None

    def __setstate__(self, state):
        raise TorchPickleError("the pickle tries to modify a storage")


@dataclass(frozen=True)
class TensorRef:
    """A tensor described by the pickle; materialised after all storages are known."""

    storage: Storage
    offset: int
    size: tuple
    stride: tuple

    def __setstate__(self, state):
        raise TorchPickleError("the pickle tries to modify a tensor")


class StateDict(dict):
    """What ``collections.OrderedDict`` unpickles to (dicts keep insertion order).

    torch pickles ``state_dict()`` with a ``BUILD`` that sets ``_metadata``: kept here
    instead of letting pickle set arbitrary attributes."""

    pickle_state = None


def _ordered_dict(*args):
    if len(args) > 1:
        raise TorchPickleError("OrderedDict called with more than one argument")
    items = list(args[0].items() if isinstance(args[0], dict) else args[0]) if args else []
    if not all(isinstance(item, tuple) and len(item) == 2 for item in items):
        raise TorchPickleError("OrderedDict built from something that is not (key, value) pairs")
    for key, _ in items:
        _check_key(key)
    return StateDict(items)


def _dims(value, what: str) -> tuple:
    if not (isinstance(value, (tuple, list)) and len(value) <= MAX_RANK
            and all(is_int(n) and n >= 0 for n in value)):
        raise TorchPickleError(f"tensor {what} {value!r:.80} is not up to {MAX_RANK} integers >= 0")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        raise TorchPickleError("tensor rebuilt from something that is not a storage")
    size, stride = _dims(size, "size"), _dims(stride, "stride")
    if len(size) != len(stride):
        raise TorchPickleError(f"tensor size {size} and stride {stride} differ in rank")
    if not is_int(storage_offset) or storage_offset < 0:
        raise TorchPickleError(f"tensor offset {storage_offset!r:.40} is not an integer >= 0")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    # An nn.Parameter is just its tensor for our purposes.
    if not isinstance(data, TensorRef):
        raise TorchPickleError("parameter rebuilt from something that is not a tensor")
    return data


def _size(*args):
    if len(args) > 1:
        raise TorchPickleError("torch.Size called with more than one argument")
    return _dims(args[0] if args else (), "size")


ALLOWED_GLOBALS: Dict[tuple, object] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
}
ALLOWED_GLOBALS.update({("torch", name): st for name, st in STORAGE_TYPES.items()})
ALLOWED_GLOBALS.update({("torch", name): dtype for name, dtype in DTYPE_NAMES.items()})

SCALAR_KEYS = (str, bytes, int, float, type(None))


def _check_key(key) -> None:
    """Dict keys are hashed while unpickling: a nested tuple costs 2^depth to hash."""
    if isinstance(key, SCALAR_KEYS):
        return
    if isinstance(key, tuple) and len(key) <= MAX_KEY_TUPLE and \
            all(isinstance(k, SCALAR_KEYS) for k in key):
        return
    raise TorchPickleError(f"dict key of type {type(key).__name__} (only strings, numbers "
                          "and flat tuples of them are allowed)")


def _refuse(what: str):
    def load(self):
        raise TorchPickleError(f"pickle opcode {what} is not used by torch checkpoints")
    return load


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; storages are recorded, not read.

    The pure-Python unpickler, so that opcodes can be replaced: its cost is linear in
    the pickle's size (a 30 KB data.pkl takes ~10 ms)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source: str, storage_from_id: Callable[[tuple], Storage]):
        super().__init__(file)
        self.source = source
        self.storage_from_id = storage_from_id

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name} from {self.source}: only tensors and "
                "plain containers are allowed (the pickle could run code)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80}")
        if not isinstance(pid[1], StorageType):
            raise TorchPickleError(f"unsupported storage type {pid[1]!r:.80}")
        key, numel = pid[2], pid[4]
        if not (isinstance(key, str) and key.isalnum() and len(key) <= 64):
            raise TorchPickleError(f"storage key {key!r:.80} is not a short alphanumeric name")
        if not is_int(numel) or numel < 0:
            raise TorchPickleError(f"storage {key} claims {numel!r:.40} elements")
        return self.storage_from_id(pid)

    def load_build(self):
        state = self.stack.pop()
        if not isinstance(self.stack[-1], StateDict):
            raise TorchPickleError(f"the pickle tries to modify a {type(self.stack[-1]).__name__}"
                                  " (only state dicts carry state)")
        self.stack[-1].pickle_state = state

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise TorchPickleError("SETITEMS on something that is not a dict")
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        if not isinstance(self.stack[-1], dict):
            raise TorchPickleError("SETITEM on something that is not a dict")
        _check_key(key)
        self.stack[-1][key] = value

    def load_dict(self):
        items = self.pop_mark()
        for key in items[0::2]:
            _check_key(key)
        self.append({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})

    def load_appends(self):
        items = self.pop_mark()
        if not isinstance(self.stack[-1], list):
            raise TorchPickleError("APPENDS on something that is not a list")
        self.stack[-1].extend(items)

    def load_append(self):
        value = self.stack.pop()
        if not isinstance(self.stack[-1], list):
            raise TorchPickleError("APPEND on something that is not a list")
        self.stack[-1].append(value)

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.APPEND[0]] = load_append
    for _name in ("EXT1", "EXT2", "EXT4", "EMPTY_SET", "ADDITEMS", "FROZENSET", "BYTEARRAY8",
                  "NEXT_BUFFER", "READONLY_BUFFER", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"):
        dispatch[getattr(pickle, _name)[0]] = _refuse(_name)


class BoundedReader:
    """A file that never reads past ``end``: a length field claiming 2^60 bytes reads
    what is there instead of allocating 2^60 bytes first."""

    def __init__(self, file, end: int):
        self.file, self.end = file, end

    def remaining(self) -> int:
        return max(0, self.end - self.file.tell())

    def read(self, n=-1):
        return self.file.read(self.remaining() if n is None or n < 0 else
                              min(n, self.remaining()))

    def readline(self):
        return self.file.readline(self.remaining())


