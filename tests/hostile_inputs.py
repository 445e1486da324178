"""Builders of malformed inputs, and a runner that feeds each one to a child process.

Every builder writes a small file or folder from scratch (no torch, no hub): a torch
pickle assembled opcode by opcode, a zip or legacy ``.pt``, a safetensors file, a GGUF
file, a llama2.c header, a heads folder, a shard index. Each *family* starts from a
valid input (its ``valid`` case must succeed, which proves the builders write what the
readers accept) and breaks one thing at a time.

:class:`Zygote` runs one case in a child process under ``RLIMIT_AS`` and a timeout
and returns what it saw; :func:`problems` lists every promise the run broke (exit
code, one ``error:`` line, no traceback, no signal, bounded memory, nothing left at
the output path, no code executed).
"""

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of every child (bytes of address space)
# Peak resident memory a child may reach: importing mlx + loading stories260K and
# its tokenizer takes ~0.4 GB here; a claim-driven allocation would go far beyond.
RSS_LIMIT = 1200 << 20
TIMEOUT = 60.0

H, V = 8, 16  # hidden size and vocabulary of the generated heads


# --- pickle opcodes -------------------------------------------------------------------------

class Pickle:
    """A protocol-2 pickle written opcode by opcode (so that it can say anything)."""

    def __init__(self):
        self.ops = [b"\x80\x02"]

    def raw(self, data: bytes) -> "Pickle":
        self.ops.append(data)
        return self

    def glob(self, module: str, name: str) -> "Pickle":
        return self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def mark(self):
        return self.raw(b"(")

    def tuple(self):
        return self.raw(b"t")

    def int(self, value: int):
        if 0 <= value < 256:
            return self.raw(b"K" + bytes([value]))
        if -(2 ** 31) <= value < 2 ** 31:
            return self.raw(b"J" + struct.pack("<i", value))
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return self.raw(b"\x8a" + bytes([len(data)]) + data)

    def str(self, value: str):
        data = value.encode()
        return self.raw(b"X" + struct.pack("<I", len(data)) + data)

    def put(self, index: int):
        return self.raw(b"r" + struct.pack("<I", index))

    def get(self, index: int):
        return self.raw(b"j" + struct.pack("<I", index))

    def ints(self, values):
        self.mark()
        for v in values:
            self.int(v)
        return self.tuple()

    def ordered_dict(self):
        return self.glob("collections", "OrderedDict").raw(b")R")

    def storage(self, key="0", numel=H * H, kind="FloatStorage"):
        self.mark().str("storage").glob("torch", kind).str(key).str("cpu").int(numel)
        return self.tuple().raw(b"Q")

    def tensor(self, size, stride=None, offset=0, key="0", numel=None, kind="FloatStorage"):
        stride = stride if stride is not None else _contiguous(size)
        numel = numel if numel is not None else int(np.prod(size))
        self.glob("torch._utils", "_rebuild_tensor_v2").mark()
        self.storage(key, numel, kind).int(offset).ints(size).ints(stride)
        return self.raw(b"\x89").ordered_dict().tuple().raw(b"R")

    def bytes(self) -> bytes:
        return b"".join(self.ops) + b"."


def _contiguous(size):
    stride, acc = [], 1
    for n in reversed(size):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))


def state_dict_pickle(entries) -> bytes:
    """``entries``: (name, size, key) triples -> an OrderedDict of tensors."""
    p = Pickle().ordered_dict().mark()
    for name, size, key in entries:
        p.str(name).tensor(size, key=key)
    return p.raw(b"u").bytes()


MEDUSA1 = [("0.0.linear.weight", (H, H), "0"), ("0.0.linear.bias", (H,), "1"),
           ("0.1.weight", (V, H), "2")]


def medusa1_storages(rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    return {key: rng.standard_normal(int(np.prod(size))).astype(np.float32)
            for _, size, key in MEDUSA1}


def write_zip_pt(path: Path, data_pkl: bytes, storages: dict, *, prefix="archive/",
                 compression=zipfile.ZIP_STORED, extra: Optional[dict] = None) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(prefix + "data.pkl", data_pkl)
        archive.writestr(prefix + "byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"{prefix}data/{key}", np.asarray(array).tobytes())
        for name, data in (extra or {}).items():
            archive.writestr(prefix + name, data)
    return path


def legacy_header() -> bytes:
    magic = Pickle().int(0x1950A86A20F9469CFC6C).bytes()
    proto = Pickle().int(1001).bytes()
    sys_info = Pickle().raw(b"}").str("little_endian").raw(b"\x88s").bytes()
    return magic + proto + sys_info


def write_legacy_pt(path: Path, obj_pickle: bytes, storages: dict, keys=None) -> Path:
    keys = list(storages) if keys is None else keys
    key_list = Pickle().raw(b"]").mark()
    for key in keys:
        key_list.str(key)
    body = legacy_header() + obj_pickle + key_list.raw(b"e").bytes()
    for key in keys:
        array = np.asarray(storages.get(key, np.zeros(0, np.float32)))
        body += struct.pack("<q", array.size) + array.tobytes()
    path.write_bytes(body)
    return path


# --- safetensors ------------------------------------------------------------------------------

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def safetensors_bytes(tensors: dict, header_patch: Optional[Callable[[dict], object]] = None,
                      metadata=None) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(v): k for k, v in ST_DTYPES.items()}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        blobs.append(array.tobytes())
        offset += array.nbytes
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_patch is not None:
        header = header_patch(header) or header
    text = header if isinstance(header, (bytes, str)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def medusa2_tensors(num_heads=2, rng=None) -> dict:
    rng = rng or np.random.default_rng(1)
    out = {}
    for h in range(num_heads):
        out[f"{h}.0.linear.weight"] = rng.standard_normal((H, H)).astype(np.float32)
        out[f"{h}.0.linear.bias"] = rng.standard_normal(H).astype(np.float32)
    return out


# --- GGUF -------------------------------------------------------------------------------------

GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY, GGUF_U64 = 4, 5, 6, 7, 8, 9, 10
GGML_F32 = 0


def gguf_string(s) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def gguf_value(kind: int, value) -> bytes:
    if kind == GGUF_U32:
        return struct.pack("<I", value)
    if kind == GGUF_I32:
        return struct.pack("<i", value)
    if kind == GGUF_F32:
        return struct.pack("<f", value)
    if kind == GGUF_BOOL:
        return struct.pack("<?", value)
    if kind == GGUF_STRING:
        return gguf_string(value)
    if kind == GGUF_U64:
        return struct.pack("<Q", value)
    if kind == GGUF_ARRAY:
        elem, items = value
        return struct.pack("<IQ", elem, len(items)) + b"".join(gguf_value(elem, v) for v in items)
    raise ValueError(kind)


GGUF_LAYERS, GGUF_DIM, GGUF_FFN, GGUF_VOCAB = 1, 16, 32, 24


def gguf_llama(rng=None):
    """(metadata [(key, kind, value)], tensors {name: float32 array}) of a tiny llama."""
    rng = rng or np.random.default_rng(2)
    tokens = [chr(ord("a") + i) for i in range(GGUF_VOCAB - 2)] + ["<s>", "</s>"]
    metadata = [
        ("general.architecture", GGUF_STRING, "llama"),
        ("llama.embedding_length", GGUF_U32, GGUF_DIM),
        ("llama.block_count", GGUF_U32, GGUF_LAYERS),
        ("llama.feed_forward_length", GGUF_U32, GGUF_FFN),
        ("llama.attention.head_count", GGUF_U32, 2),
        ("llama.attention.head_count_kv", GGUF_U32, 2),
        ("llama.context_length", GGUF_U32, 64),
        ("tokenizer.ggml.model", GGUF_STRING, "gpt2"),
        ("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, tokens)),
        ("tokenizer.ggml.token_type", GGUF_ARRAY, (GGUF_I32, [1] * (GGUF_VOCAB - 2) + [3, 3])),
        ("tokenizer.ggml.merges", GGUF_ARRAY, (GGUF_STRING, [])),
        ("tokenizer.ggml.bos_token_id", GGUF_U32, GGUF_VOCAB - 2),
        ("tokenizer.ggml.eos_token_id", GGUF_U32, GGUF_VOCAB - 1),
    ]
    d, f, v = GGUF_DIM, GGUF_FFN, GGUF_VOCAB
    shapes = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    for name, shape in [("attn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (d, d)),
                        ("attn_v", (d, d)), ("attn_output", (d, d)), ("ffn_norm", (d,)),
                        ("ffn_gate", (f, d)), ("ffn_up", (f, d)), ("ffn_down", (d, f))]:
        shapes[f"blk.0.{name}.weight"] = shape
    tensors = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}
    return metadata, tensors


def gguf_bytes(metadata, tensors, *, version=3, tensor_count=None, kv_count=None,
               info_patch: Optional[Callable[[str, list, int, int], tuple]] = None,
               truncate: Optional[int] = None, alignment=32) -> bytes:
    """GGUF v3. ``info_patch(name, dims, type, offset) -> (dims, type, offset)`` edits one
    tensor's header entry; the counts can lie."""
    out = b"GGUF" + struct.pack("<I", version)
    out += struct.pack("<QQ", len(tensors) if tensor_count is None else tensor_count,
                       len(metadata) if kv_count is None else kv_count)
    for key, kind, value in metadata:
        out += gguf_string(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    data, offset = b"", 0
    for name, array in tensors.items():
        dims, kind = list(reversed(array.shape)), GGML_F32
        this_offset = offset
        if info_patch is not None:
            dims, kind, this_offset = info_patch(name, dims, kind, this_offset)
        out += gguf_string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", n) for n in dims)
        out += struct.pack("<IQ", kind, this_offset)
        blob = array.astype(np.float32).tobytes()
        blob += b"\0" * (-len(blob) % alignment)
        data += blob
        offset += len(blob)
    out += b"\0" * (-len(out) % alignment)
    out += data
    return out[:truncate] if truncate is not None else out


# --- llama2.c ---------------------------------------------------------------------------------

def llama2c_bytes(header, floats: Optional[int] = None) -> bytes:
    """A llama2.c header (7 int32) and ``floats`` float32 values after it (default: the
    exact count the header asks for)."""
    dim, hidden, layers, heads, kv, vocab, seq = header
    if floats is None:
        head_dim = dim // heads
        floats = (abs(vocab) * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * head_dim * dim
                                               + 3 * hidden * dim) + dim
                  + seq * head_dim + (abs(vocab) * dim if vocab < 0 else 0))
    rng = np.random.default_rng(3)
    return struct.pack("<7i", *header) + (rng.standard_normal(floats) * 0.1).astype("<f4").tobytes()


# --- heads folders ----------------------------------------------------------------------------

def heads_folder(folder: Path, hidden=64, vocab=512, num_heads=2, num_layers=1,
                 config_patch=None, tensors_patch=None, raw_config: Optional[bytes] = None,
                 raw_weights: Optional[bytes] = None) -> Path:
    """A medusa-mlx heads folder that fits stories260K (hidden 64, vocab 512)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    tensors = {}
    for h in range(num_heads):
        for l in range(num_layers):
            tensors[f"heads.{h}.blocks.{l}.linear.weight"] = \
                (rng.standard_normal((hidden, hidden)) * 0.01).astype(np.float32)
            tensors[f"heads.{h}.blocks.{l}.linear.bias"] = np.zeros(hidden, np.float32)
        tensors[f"heads.{h}.lm_head.weight"] = \
            (rng.standard_normal((vocab, hidden)) * 0.01).astype(np.float32)
    config = {"format": "medusa-mlx", "medusa_num_heads": num_heads,
              "medusa_num_layers": num_layers, "hidden_size": hidden, "vocab_size": vocab,
              "shared_lm_head": False}
    if config_patch is not None:
        config = config_patch(config) or config
    if tensors_patch is not None:
        tensors = tensors_patch(tensors) or tensors
    weights = raw_weights if raw_weights is not None else safetensors_bytes(tensors)
    (folder / "model.safetensors").write_bytes(weights)
    text = raw_config if raw_config is not None else json.dumps(config).encode()
    (folder / "config.json").write_bytes(text)
    return folder


def drafter_folder(folder: Path, hidden=64, vocab=512, heads=8, kv_heads=4, intermediate=128,
                   config_patch=None, tensors_patch=None) -> Path:
    """A context drafter folder (``"kind": "context"``) that fits stories260K."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    head_dim = hidden // heads
    shapes = {"fuse.weight": (hidden, 2 * hidden), "attention_norm.weight": (hidden,),
              "q_proj.weight": (heads * head_dim, hidden), "k_proj.weight": (kv_heads * head_dim, hidden),
              "v_proj.weight": (kv_heads * head_dim, hidden), "o_proj.weight": (hidden, heads * head_dim),
              "mlp_norm.weight": (hidden,), "gate_proj.weight": (intermediate, hidden),
              "up_proj.weight": (intermediate, hidden), "down_proj.weight": (hidden, intermediate),
              "norm.weight": (hidden,)}
    tensors = {name: (rng.standard_normal(shape) * 0.02).astype(np.float32)
               for name, shape in shapes.items()}
    config = {"format": "medusa-mlx", "kind": "context", "hidden_size": hidden, "vocab_size": vocab,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "intermediate_size": intermediate, "max_depth": 4, "rope_theta": 10000.0,
              "norm_eps": 1e-5}
    if config_patch is not None:
        config = config_patch(config) or config
    if tensors_patch is not None:
        tensors = tensors_patch(tensors) or tensors
    (folder / "model.safetensors").write_bytes(safetensors_bytes(tensors))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def nested_json(depth: int, opener="[", closer="]") -> str:
    return opener * depth + closer * depth


# --- running a case ---------------------------------------------------------------------------

@dataclass
class Case:
    """One hostile input: the command to run and what a correct program does with it."""

    name: str
    build: Callable[[Path], "Run"]


@dataclass
class Run:
    argv: List[str]  # after ``python``
    expect: int = 1  # exit code: 1 for bad input, 0 for valid, 130/143 for signals
    stdin: bytes = b""
    output: Optional[Path] = None  # must not exist afterwards (unless expect == 0)
    keep: List[Path] = field(default_factory=list)  # must be byte-identical afterwards
    during: Optional[Callable[[subprocess.Popen], None]] = None  # e.g. send a signal
    only_line: bool = True  # stderr must be exactly the error line (no header, no notes)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss: int  # bytes
    timed_out: bool = False


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


class Zygote:
    """``hostile_zygote.py``: forks one child per case from an already-imported process."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("hostile_zygote.py"))], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), text=True)

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the hostile-case zygote died")
        return json.loads(line)

    def run(self, run: Run) -> Result:
        with tempfile.TemporaryDirectory(prefix="hostile-io-") as io_dir:
            io_dir = Path(io_dir)
            (io_dir / "stdin").write_bytes(run.stdin)
            (io_dir / "stdout").touch()
            (io_dir / "stderr").touch()
            request = {"argv": run.argv, "timeout": TIMEOUT, "memory": MEMORY_LIMIT,
                       **{name: str(io_dir / name) for name in ("stdin", "stdout", "stderr")}}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._reply()["pid"]
            if run.during is not None:
                run.during(_Child(pid))
            done = self._reply()
            return Result(done["status"], (io_dir / "stdout").read_text(errors="replace"),
                          (io_dir / "stderr").read_text(errors="replace"), done["seconds"],
                          done["maxrss"], done["timed_out"])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class _Child:
    pid: int

    def send_signal(self, sig):
        os.kill(self.pid, sig)


def snapshot(paths: List[Path]) -> dict:
    """Bytes of every file under ``paths`` (to prove they are left intact)."""
    files = {}
    for root in paths:
        for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def problems(run: Run, result: Result, canary: Path, before: dict) -> List[str]:
    found = []
    if result.timed_out:
        found.append(f"hung (killed after {TIMEOUT:.0f} s)")
    elif result.code < 0:
        found.append(f"killed by signal {signal.Signals(-result.code).name}")
    elif result.code != run.expect:
        found.append(f"exit code {result.code}, expected {run.expect}")
    if "Traceback" in result.stderr:
        found.append("traceback on stderr")
    for word in ("MemoryError", "Fatal Python error", "Segmentation fault"):
        if word in result.stderr:
            found.append(f"{word} on stderr")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if run.expect != 0:
        if len(errors) != 1:
            found.append(f"{len(errors)} 'error:' lines")
        elif run.only_line and len(lines) != 1:
            found.append(f"{len(lines)} lines on stderr, expected the error line alone")
    elif errors:
        found.append("an 'error:' line on a valid input")
    if result.max_rss > RSS_LIMIT:
        found.append(f"peak memory {result.max_rss >> 20} MB > {RSS_LIMIT >> 20} MB")
    if canary.exists():
        found.append("pickled code ran (the canary file exists)")
    if run.output is not None and run.expect != 0:
        if run.output.exists() and str(run.output) not in {str(p) for p in run.keep}:
            found.append(f"{run.output.name} was left behind")
        leftovers = sorted(p.name for p in run.output.parent.iterdir()
                           if p.name.startswith(f".{run.output.name}."))
        if leftovers:
            found.append(f"temporary files left: {leftovers}")
    if run.expect != 0 and snapshot(run.keep) != before:
        found.append("an existing output was changed")
    return found
