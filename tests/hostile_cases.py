"""The catalogue of hostile inputs: one :class:`Case` per malformed file, option or event.

Families (prefix of each case name): ``pt`` torch zip pickles, ``legacy`` torch legacy
files, ``zip`` broken archives, ``st`` safetensors, ``vllm`` vLLM configs, ``index``
shard indexes, ``heads`` heads folders (through ``chat.py --medusa``), ``gguf`` and
``l2c`` backbones (through ``chat.py --model``), ``cli`` option values, ``stdin``
chat input, ``special`` FIFOs / devices / symlinks, ``force`` output replacement,
``signal`` SIGTERM/SIGINT mid-conversion, ``inject`` failures during the write.
Every family has a ``valid`` case that must succeed.
"""

import json
import os
import signal
import struct
import time
import zipfile
from pathlib import Path

import numpy as np

from hostile_inputs import (
    GGUF_ARRAY, GGUF_LAYERS, GGUF_STRING, GGUF_U32, GGUF_U64, H, MEDUSA1, REPO, V, Case,
    Pickle, Run, drafter_folder, gguf_bytes, gguf_llama, heads_folder, legacy_header, llama2c_bytes,
    medusa1_storages, medusa2_tensors, nested_json, safetensors_bytes, state_dict_pickle,
    write_legacy_pt, write_zip_pt,
)

SHARED = Path(os.environ.get("MEDUSA_SHARED", REPO.parent / "shared"))  # as conftest.py
STORIES = SHARED / "data" / "stories260K.bin"
CASES = []


def case(name):
    def register(build):
        CASES.append(Case(name, build))
        return build
    return register


def convert(tmp: Path, source, *options, expect=1, keep=(), **kw) -> Run:
    out = tmp / "out"
    return Run(["convert.py", str(source), "-o", str(out), *map(str, options)], expect=expect,
               output=out, keep=list(keep), **kw)


def chat(tmp: Path, *, model=STORIES, medusa=None, expect=1, stdin=b"hi\n", options=()) -> Run:
    argv = ["chat.py", "--model", str(model), "--max-tokens", "3", *options]
    if medusa is not None:
        argv += ["--medusa", str(medusa)]
    return Run(argv, expect=expect, stdin=stdin, only_line=expect != 0 and not options)


def canary_command(tmp: Path) -> str:
    return f"touch {tmp / 'CANARY'}"


# --- torch zip pickles ---------------------------------------------------------------------

def pt_file(tmp, data_pkl, storages=None, **kw) -> Path:
    storages = medusa1_storages() if storages is None else storages
    return write_zip_pt(tmp / "medusa_lm_head.pt", data_pkl, storages, **kw)


def medusa1_prefix() -> Pickle:
    """OrderedDict + MARK + the first two entries (key, tensor), open for more."""
    p = Pickle().ordered_dict().mark()
    for name, size, key in MEDUSA1[:2]:
        p.str(name).tensor(size, key=key)
    return p


def with_lm_head(value: Pickle) -> bytes:
    """``value`` must already hold a pushed object for key ``0.1.weight``."""
    return value.raw(b"u").bytes()


case("pt-valid")(lambda t: convert(t, pt_file(t, state_dict_pickle(MEDUSA1)), expect=0))


@case("pt-reduce-os-system")
def _(t):
    p = medusa1_prefix().str("0.1.weight").glob("os", "system").mark().str(canary_command(t))
    return convert(t, pt_file(t, with_lm_head(p.tuple().raw(b"R"))))


for _module, _name in [("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
                       ("subprocess", "check_output"), ("builtins", "getattr"),
                       ("torch._utils", "_rebuild_tensor_v3"), ("numpy", "load")]:
    @case(f"pt-global-{_module}.{_name}")
    def _(t, module=_module, name=_name):
        p = medusa1_prefix().str("0.1.weight").glob(module, name).mark()
        p.str(f"__import__('os').system('{canary_command(t)}')")
        return convert(t, pt_file(t, with_lm_head(p.tuple().raw(b"R"))))


@case("pt-ext-opcode")
def _(t):
    return convert(t, pt_file(t, with_lm_head(medusa1_prefix().str("0.1.weight").raw(b"\x82\x01"))))


@case("pt-build-mutates-storage-type")
def _(t):
    """BUILD on the allowed FloatStorage global, then a clean file in the same process."""
    body = state_dict_pickle(MEDUSA1)[2:-1]  # without PROTO and STOP
    data = (Pickle().glob("torch", "FloatStorage").raw(b"}").str("dtype").str("int32")
            .raw(b"sb0").raw(body).bytes())
    bad = pt_file(t, data)
    good = write_zip_pt(t / "good.pt", state_dict_pickle(MEDUSA1), medusa1_storages())
    code = (
        "import sys, numpy as np\n"
        "from medusa_mlx.conversion.torch_pickle import load_torch_checkpoint\n"
        "try:\n"
        f"    load_torch_checkpoint({str(bad)!r})\n"
        "except ValueError:\n"
        "    pass\n"
        f"got = load_torch_checkpoint({str(good)!r})['0.0.linear.weight']\n"
        "want = np.random.default_rng(0).standard_normal(64).astype(np.float32)\n"
        "sys.exit(0 if got.dtype == np.float32 and np.array_equal(got.reshape(-1), want) else 3)\n"
    )
    return Run(["-c", code], expect=0)


@case("pt-build-sets-function-defaults")
def _(t):
    p = medusa1_prefix().str("0.1.weight").glob("torch._utils", "_rebuild_tensor_v2")
    p.raw(b"N}").str("__defaults__").mark().int(1).tuple().raw(b"s\x86b")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-build-sets-class-attribute")
def _(t):
    p = medusa1_prefix().str("0.1.weight").glob("collections", "OrderedDict")
    p.raw(b"N}").str("__setstate__").glob("torch._utils", "_rebuild_parameter").raw(b"s\x86b")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-list-contains-itself")
def _(t):
    p = medusa1_prefix().str("0.1.weight").raw(b"]").put(900).get(900).raw(b"a")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-dict-contains-itself")
def _(t):
    p = Pickle().ordered_dict().put(901).mark()
    for name, size, key in MEDUSA1:
        p.str(name).tensor(size, key=key)
    p.str("self").get(901).raw(b"u")
    return convert(t, pt_file(t, p.bytes()))


def shared_lists(levels: int, leaf_tensor: bool) -> bytes:
    """``0.1.weight`` = x with x = [x, x] ``levels`` times: 2^levels paths through
    ``levels`` objects, around a tensor (or an empty list)."""
    p = medusa1_prefix().str("0.1.weight")
    p = p.tensor((V, H), key="2") if leaf_tensor else p.raw(b"]")
    for _ in range(levels):
        p.put(903).raw(b"0]").get(903).raw(b"a").get(903).raw(b"a")
    return with_lm_head(p)


case("pt-shared-sublists-60-levels")(lambda t: convert(t, pt_file(t, shared_lists(60, False))))
case("pt-shared-tensor-lists-40-levels")(lambda t: convert(
    t, pt_file(t, shared_lists(40, True))))


@case("pt-nested-tuple-keys")
def _(t):
    p = medusa1_prefix().str("0.1.weight").tensor((V, H), key="2").raw(b")")
    for _ in range(64):
        p.put(904).get(904).raw(b"\x86")  # t = (t, t): hashing it costs 2^64
    p.raw(b"N")
    return convert(t, pt_file(t, p.raw(b"u").bytes()))


@case("pt-deep-nesting")
def _(t):
    p = medusa1_prefix().str("0.1.weight").raw(b"]" * 20000 + b"a" * 19999)
    return convert(t, pt_file(t, with_lm_head(p)))


def tensor_case(name, **tensor):
    @case(f"pt-{name}")
    def _(t):
        p = medusa1_prefix().str("0.1.weight").tensor(**{"key": "2", "numel": V * H, **tensor})
        return convert(t, pt_file(t, with_lm_head(p)))


tensor_case("stride0-expands-to-1GB", size=(16384, 16384), stride=(0, 0))
tensor_case("overlapping-stride-256MB", size=(8192, 8192), stride=(1, 1))
tensor_case("size-2^40", size=(2 ** 40, 2 ** 40), stride=(1, 1))
tensor_case("negative-size", size=(-V, H))
tensor_case("negative-stride", size=(V, H), stride=(-1, 1))
tensor_case("negative-offset", size=(V, H), offset=-5)
tensor_case("offset-past-storage", size=(V, H), offset=10 ** 6)
tensor_case("view-past-storage", size=(V + 1, H))
tensor_case("rank-200", size=(1,) * 200)
tensor_case("stride-rank-mismatch", size=(V, H), stride=(1,))
tensor_case("numel-claims-2^50", size=(V, H), numel=2 ** 50)
tensor_case("numel-claims-more-than-member", size=(V, H), numel=V * H + 1)
tensor_case("numel-negative", size=(V, H), numel=-1)
tensor_case("storage-type-unknown", size=(V, H), kind="ComplexFloatStorage")


@case("pt-size-not-ints")
def _(t):
    p = medusa1_prefix().str("0.1.weight").glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.storage("2", V * H).int(0).mark().str("512").str("x").tuple().ints((H, 1))
    p.raw(b"\x89").ordered_dict().tuple().raw(b"R")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-storage-key-escapes")
def _(t):
    p = medusa1_prefix().str("0.1.weight").tensor((V, H), key="../../../etc/passwd")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-persistent-id-not-tuple")
def _(t):
    p = medusa1_prefix().str("0.1.weight").str("storage").raw(b"Q")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-binunicode8-claims-2^62")
def _(t):
    p = medusa1_prefix().str("0.1.weight").raw(b"\x8d" + struct.pack("<Q", 2 ** 62) + b"abc")
    return convert(t, pt_file(t, with_lm_head(p)))


@case("pt-storage-member-missing")
def _(t):
    storages = medusa1_storages()
    del storages["2"]
    return convert(t, pt_file(t, state_dict_pickle(MEDUSA1), storages))


@case("pt-storage-member-short")
def _(t):
    storages = medusa1_storages()
    storages["2"] = storages["2"][:-1]
    return convert(t, pt_file(t, state_dict_pickle(MEDUSA1), storages))


@case("pt-byteorder-not-ascii")
def _(t):
    path = t / "medusa_lm_head.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/data.pkl", state_dict_pickle(MEDUSA1))
        archive.writestr("a/byteorder", b"\xff\xfe")
        for key, array in medusa1_storages().items():
            archive.writestr(f"a/data/{key}", array.tobytes())
    return convert(t, path)


@case("pt-entry-not-a-tensor")
def _(t):
    return convert(t, pt_file(t, with_lm_head(medusa1_prefix().str("0.1.weight").int(7))))


@case("pt-top-level-not-a-dict")
def _(t):
    return convert(t, pt_file(t, Pickle().raw(b"]").tensor((H, H)).raw(b"a").bytes()))


# --- broken zip archives -------------------------------------------------------------------

def patch_member(path: Path, member: str, local_at: int, central_at: int, value: bytes):
    """Overwrite a field in a member's local header and central directory entry."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.find(b"PK\x03\x04")
    while local >= 0:
        if data[local + 30: local + 30 + len(name)] == name:
            data[local + local_at: local + local_at + len(value)] = value
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        if data[central + 46: central + 46 + len(name)] == name:
            data[central + central_at: central + central_at + len(value)] = value
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


for _member in ("archive/data.pkl", "archive/data/2"):
    _short = "pickle" if _member.endswith("pkl") else "storage"

    @case(f"zip-encrypted-{_short}")
    def _(t, member=_member):
        path = pt_file(t, state_dict_pickle(MEDUSA1))
        patch_member(path, member, 6, 8, struct.pack("<H", 1))
        return convert(t, path)

    @case(f"zip-unknown-compression-{_short}")
    def _(t, member=_member):
        path = pt_file(t, state_dict_pickle(MEDUSA1))
        patch_member(path, member, 8, 10, struct.pack("<H", 99))
        return convert(t, path)

    @case(f"zip-corrupt-deflate-{_short}")
    def _(t, member=_member):
        path = pt_file(t, state_dict_pickle(MEDUSA1), compression=zipfile.ZIP_DEFLATED)
        data = bytearray(path.read_bytes())
        start = data.find(member.encode()) + len(member)  # first local header's data
        for i in range(start + 2, start + 40):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
        return convert(t, path)


@case("zip-storage-inflates-to-64MB")
def _(t):
    path = t / "medusa_lm_head.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", state_dict_pickle(MEDUSA1))
        storages = medusa1_storages()
        archive.writestr("archive/data/0", storages["0"].tobytes())
        archive.writestr("archive/data/1", storages["1"].tobytes())
        archive.writestr("archive/data/2", bytes(64 << 20))
    return convert(t, path)


@case("zip-pickle-inflates-to-256MB")
def _(t):
    path = t / "medusa_lm_head.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02(" + bytes(256 << 20))
    return convert(t, path)


@case("zip-two-data-pkl")
def _(t):
    return convert(t, pt_file(t, state_dict_pickle(MEDUSA1), extra={"x/data.pkl": b"."}))


@case("zip-truncated")
def _(t):
    path = pt_file(t, state_dict_pickle(MEDUSA1))
    path.write_bytes(path.read_bytes()[:-30])
    return convert(t, path)


# --- torch legacy files ----------------------------------------------------------------------

def legacy_file(t, obj_pickle, storages=None, keys=None) -> Path:
    storages = medusa1_storages() if storages is None else storages
    return write_legacy_pt(t / "medusa_lm_head.pt", obj_pickle, storages, keys)


case("legacy-valid")(lambda t: convert(t, legacy_file(t, state_dict_pickle(MEDUSA1)), expect=0))


@case("legacy-storage-claims-2^40-elements")
def _(t):
    path = legacy_file(t, state_dict_pickle(MEDUSA1))
    data = bytearray(path.read_bytes())
    first = data.find(struct.pack("<q", H * H))
    data[first: first + 8] = struct.pack("<q", 2 ** 40)
    path.write_bytes(bytes(data))
    return convert(t, path)


@case("legacy-storage-claims-negative")
def _(t):
    path = legacy_file(t, state_dict_pickle(MEDUSA1))
    data = bytearray(path.read_bytes())
    first = data.find(struct.pack("<q", H * H))
    data[first: first + 8] = struct.pack("<q", -8)
    path.write_bytes(bytes(data))
    return convert(t, path)


@case("legacy-list-contains-itself")
def _(t):
    p = medusa1_prefix().str("0.1.weight").raw(b"]").put(900).get(900).raw(b"a")
    return convert(t, legacy_file(t, with_lm_head(p), keys=["0", "1"]))


case("legacy-shared-tensor-lists-40-levels")(lambda t: convert(
    t, legacy_file(t, shared_lists(40, True))))


@case("legacy-keys-not-a-list")
def _(t):
    body = legacy_header() + state_dict_pickle(MEDUSA1) + Pickle().int(5).bytes()
    (t / "medusa_lm_head.pt").write_bytes(body)
    return convert(t, t / "medusa_lm_head.pt")


@case("legacy-sys-info-not-a-dict")
def _(t):
    magic = Pickle().int(0x1950A86A20F9469CFC6C).bytes() + Pickle().int(1001).bytes()
    body = magic + Pickle().int(3).bytes() + state_dict_pickle(MEDUSA1)
    (t / "medusa_lm_head.pt").write_bytes(body)
    return convert(t, t / "medusa_lm_head.pt")


@case("legacy-header-pickle-runs-code")
def _(t):
    magic = Pickle().glob("os", "system").mark().str(canary_command(t)).tuple().raw(b"R").bytes()
    (t / "medusa_lm_head.pt").write_bytes(magic + state_dict_pickle(MEDUSA1))
    return convert(t, t / "medusa_lm_head.pt")


# --- safetensors ------------------------------------------------------------------------------

def st_file(t, data: bytes, name="medusa_lm_head.safetensors") -> Path:
    (t / name).write_bytes(data)
    return t / name


def st_case(name, patch=None, *, raw=None, expect=1, cut=None):
    @case(f"st-{name}")
    def _(t):
        data = raw if raw is not None else safetensors_bytes(medusa2_tensors(), patch)
        data = data[:cut] if cut is not None else data
        return convert(t, st_file(t, data), expect=expect)


def _entry(key, **changes):
    def patch(header):
        header[next(k for k in header if k.endswith(key))].update(changes)
    return patch


st_case("valid", expect=0)
st_case("header-length-2^63", raw=struct.pack("<Q", 2 ** 63) + b"{}")
st_case("header-length-past-file", raw=struct.pack("<Q", 4096) + b'{"a": 1}')
st_case("header-nested-json", raw=struct.pack("<Q", 400000) + nested_json(200000).encode())
st_case("header-not-a-dict", lambda h: [1, 2])
st_case("header-not-utf8", raw=struct.pack("<Q", 8) + b"\xff\xfe{}    ")
st_case("entry-not-a-dict", lambda h: {**h, "0.0.linear.weight": [1]})
st_case("shape-negative", _entry("0.0.linear.weight", shape=[-8, -8]))
st_case("shape-strings", _entry("0.0.linear.weight", shape=["8", "8"]))
st_case("shape-2^40", _entry("0.0.linear.weight", shape=[2 ** 40, 2 ** 40]))
st_case("shape-rank-100", _entry("0.0.linear.weight", shape=[1] * 100))
st_case("shape-zero", _entry("0.0.linear.weight", shape=[0, 8], data_offsets=[0, 0]))
st_case("offsets-past-end", _entry("0.0.linear.weight", data_offsets=[0, 10 ** 9]))
st_case("offsets-reversed", _entry("0.0.linear.weight", data_offsets=[256, 0]))
st_case("offsets-disagree-with-shape", _entry("0.0.linear.weight", shape=[8, 9]))
st_case("dtype-unknown", _entry("0.0.linear.weight", dtype="Q7"))
st_case("metadata-nested", lambda h: {**h, "__metadata__": {"a": {"b": [1]}}})
st_case("truncated", cut=-100)


# --- vLLM -------------------------------------------------------------------------------------

def vllm_folder(t, config_patch=None, *, token_map=True, rows=V // 2, raw_config=None):
    folder = t / "vllm"
    folder.mkdir()
    rng = np.random.default_rng(5)
    tensors = {"blocks.0.layers.0.weight": rng.standard_normal((H, H)).astype(np.float32),
               "blocks.0.layers.0.bias": rng.standard_normal(H).astype(np.float32),
               "lm_heads.0.weight": rng.standard_normal((rows, H)).astype(np.float32)}
    if token_map:
        tensors["token_map"] = np.arange(rows, dtype=np.int64) * 2
    (folder / "model.safetensors").write_bytes(safetensors_bytes(tensors))
    config = {"model_type": "medusa", "num_heads": 1, "num_hidden_layers": 1,
              "hidden_size": H, "vocab_size": V, "medusa_fc_bias": True}
    if config_patch is not None:
        config = config_patch(config) or config
    (folder / "config.json").write_bytes(raw_config or json.dumps(config).encode())
    return folder


case("vllm-valid")(lambda t: convert(t, vllm_folder(t), "--expand-vocab", expect=0))
case("vllm-vocab-10^9")(lambda t: convert(
    t, vllm_folder(t, lambda c: {**c, "vocab_size": 10 ** 9}), "--expand-vocab"))
case("vllm-vocab-string")(lambda t: convert(
    t, vllm_folder(t, lambda c: {**c, "vocab_size": "big"}), "--expand-vocab"))
case("vllm-logit-scale-string")(lambda t: convert(
    t, vllm_folder(t, lambda c: {**c, "logit_scale": "x"}, rows=V, token_map=False)))
case("vllm-config-nested")(lambda t: convert(
    t, vllm_folder(t, raw_config=nested_json(100000, "{\"a\":", "}").encode())))
case("vllm-config-not-a-dict")(lambda t: convert(t, vllm_folder(t, raw_config=b"[1, 2]"),
                                                 "--format", "vllm", "--expand-vocab"))


@case("vllm-token-map-out-of-range")
def _(t):
    folder = vllm_folder(t)
    tensors = dict(medusa2_tensors(0))
    rng = np.random.default_rng(6)
    tensors = {"blocks.0.layers.0.weight": rng.standard_normal((H, H)).astype(np.float32),
               "blocks.0.layers.0.bias": rng.standard_normal(H).astype(np.float32),
               "lm_heads.0.weight": rng.standard_normal((V // 2, H)).astype(np.float32),
               "token_map": np.full(V // 2, 10 ** 12, dtype=np.int64)}
    (folder / "model.safetensors").write_bytes(safetensors_bytes(tensors))
    return convert(t, folder, "--expand-vocab")


# --- shard indexes ---------------------------------------------------------------------------

def full_model_tensors():
    rng = np.random.default_rng(7)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((V, H)).astype(np.float32)}
    for name, array in medusa2_tensors(1).items():
        tensors[f"medusa_head.{name}"] = array
    return tensors


def index_folder(t, weight_map=None, *, raw_index=None, shard_file=True):
    folder = t / "model"
    folder.mkdir()
    tensors = full_model_tensors()
    if shard_file:
        (folder / "model-00001.safetensors").write_bytes(safetensors_bytes(tensors))
    if weight_map is None:
        weight_map = {k: "model-00001.safetensors" for k in tensors}
    index = raw_index if raw_index is not None else \
        json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    (folder / "model.safetensors.index.json").write_bytes(index)
    return folder


def outside_shard(t) -> Path:
    path = t / "outside.safetensors"
    path.write_bytes(safetensors_bytes(full_model_tensors()))
    return path


def index_case(name, shard, *, prepare=None):
    @case(f"index-{name}")
    def _(t):
        folder = index_folder(t, shard_file=False)
        target = shard(t) if callable(shard) else shard
        if prepare is not None:
            prepare(t, folder, target)
            target = "model-00001.safetensors"
        names = full_model_tensors()
        index = {"metadata": {}, "weight_map": {k: str(target) for k in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return convert(t, folder)


case("index-valid")(lambda t: convert(t, index_folder(t), expect=0))
index_case("dotdot", lambda t: (outside_shard(t), "../outside.safetensors")[1])
index_case("absolute", lambda t: str(outside_shard(t)))
index_case("dev-zero", "/dev/zero")
index_case("dev-urandom", "/dev/urandom")
index_case("symlink-out-of-folder", outside_shard,
           prepare=lambda t, f, target: os.symlink(target, f / "model-00001.safetensors"))
index_case("symlink-to-dev-zero", "/dev/zero",
           prepare=lambda t, f, target: os.symlink(target, f / "model-00001.safetensors"))
index_case("fifo", "x", prepare=lambda t, f, target: os.mkfifo(f / "model-00001.safetensors"))
index_case("directory", "x", prepare=lambda t, f, target: (f / "model-00001.safetensors").mkdir())
case("index-weight-map-list")(lambda t: convert(t, index_folder(t, ["a", "b"])))
case("index-weight-map-values-ints")(lambda t: convert(
    t, index_folder(t, {k: 1 for k in full_model_tensors()})))
case("index-not-a-dict")(lambda t: convert(t, index_folder(t, raw_index=b"[]")))
case("index-nested-json")(lambda t: convert(
    t, index_folder(t, raw_index=nested_json(100000).encode())))
case("index-not-utf8")(lambda t: convert(t, index_folder(t, raw_index=b"{\"\xff\": 1}")))


# --- heads folders (chat.py --medusa, stories260K backbone) ----------------------------------

def heads_case(name, expect=1, **kw):
    @case(f"heads-{name}")
    def _(t):
        return chat(t, medusa=heads_folder(t / "heads", **kw), expect=expect,
                    options=["--tree", "auto"] if expect == 0 else ())


def patch(**changes):
    return lambda config: {**config, **changes}


def shared(config):
    return {**config, "shared_lm_head": True}


def drop_lm_heads(tensors):
    return {k: v for k, v in tensors.items() if "lm_head" not in k}


heads_case("valid", expect=0)
heads_case("q-group-size-0", config_patch=patch(quantization={"group_size": 0, "bits": 4}))
heads_case("q-bits-99", config_patch=patch(quantization={"group_size": 64, "bits": 99}))
heads_case("q-not-a-dict", config_patch=patch(quantization=[64, 4]))
heads_case("head-vocab-far-beyond", config_patch=lambda c: {**shared(c), "head_vocab": [1, 10 ** 7]},
           tensors_patch=drop_lm_heads)
heads_case("head-vocab-just-beyond", config_patch=lambda c: {**shared(c), "head_vocab": [1, 512]},
           tensors_patch=drop_lm_heads)
heads_case("head-vocab-negative", config_patch=lambda c: {**shared(c), "head_vocab": [-1, 3]},
           tensors_patch=drop_lm_heads)
heads_case("head-vocab-strings", config_patch=lambda c: {**shared(c), "head_vocab": ["a"]},
           tensors_patch=drop_lm_heads)
heads_case("tree-50000-nodes", config_patch=patch(tree=[[i] for i in range(50000)]))
heads_case("tree-not-a-list", config_patch=patch(tree="tree-8"))
heads_case("tree-path-strings", config_patch=patch(tree=[["a"]]))
heads_case("tree-index-10^9", config_patch=patch(tree=[[10 ** 9]]))
heads_case("tree-nested", config_patch=patch(tree=[[[[[0]]]]]))
heads_case("vocab-size-missing", config_patch=lambda c: {k: v for k, v in c.items()
                                                         if k != "vocab_size"})
heads_case("hidden-size-string", config_patch=patch(hidden_size="64"))
heads_case("hidden-size-mismatch", hidden=32)
heads_case("num-heads-10^9", config_patch=patch(medusa_num_heads=10 ** 9))
heads_case("num-heads-negative", config_patch=patch(medusa_num_heads=-1))
heads_case("num-layers-10^7", config_patch=patch(medusa_num_layers=10 ** 7))
heads_case("num-heads-disagrees-with-tensors", config_patch=patch(medusa_num_heads=3))
heads_case("tensor-shape-wrong", tensors_patch=lambda ts: {
    **ts, "heads.0.lm_head.weight": np.zeros((7, 64), np.float32)})
heads_case("tensor-extra", tensors_patch=lambda ts: {**ts, "evil": np.zeros(3, np.float32)})
heads_case("weights-truncated", raw_weights=safetensors_bytes({"heads.0.lm_head.weight": np.zeros(
    (512, 64), np.float32)})[:5000])
heads_case("weights-header-2^63", raw_weights=struct.pack("<Q", 2 ** 63) + b"{}")
heads_case("config-nested-json", raw_config=nested_json(100000).encode())
heads_case("config-not-a-dict", raw_config=b"[1]")
heads_case("config-not-utf8", raw_config=b"{\"format\": \"\xff\"}")
heads_case("config-not-json", raw_config=b"{format")
heads_case("format-missing", config_patch=lambda c: {k: v for k, v in c.items() if k != "format"})


@case("heads-config-fifo")
def _(t):
    folder = heads_folder(t / "heads")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    return chat(t, medusa=folder)


@case("heads-weights-dev-zero")
def _(t):
    folder = heads_folder(t / "heads")
    (folder / "model.safetensors").unlink()
    os.symlink("/dev/zero", folder / "model.safetensors")
    return chat(t, medusa=folder)


@case("heads-weights-missing")
def _(t):
    folder = heads_folder(t / "heads")
    (folder / "model.safetensors").unlink()
    return chat(t, medusa=folder)


# --- context drafter folders (chat.py --medusa, stories260K backbone; convert.py --to vllm) ---

def drafter_case(name, expect=1, **kw):
    @case(f"drafter-{name}")
    def _(t):
        return chat(t, medusa=drafter_folder(t / "drafter", **kw), expect=expect,
                    options=["--tree", "auto"] if expect == 0 else ())


def without(*names):
    return lambda tensors: {k: v for k, v in tensors.items() if k not in names}


drafter_case("valid", expect=0)
drafter_case("valid-saved-tree", expect=0, config_patch=patch(tree=[[0], [0, 0], [1]]))
drafter_case("kind-unknown", config_patch=patch(kind="eagle9"))
drafter_case("kind-not-a-string", config_patch=patch(kind=["context"]))
drafter_case("hidden-negative", config_patch=patch(hidden_size=-64))
drafter_case("hidden-10^12", config_patch=patch(hidden_size=10 ** 12))
drafter_case("hidden-string", config_patch=patch(hidden_size="64"))
drafter_case("hidden-mismatch", hidden=32)
drafter_case("vocab-mismatch", config_patch=patch(vocab_size=100))
drafter_case("heads-not-dividing-hidden", config_patch=patch(num_attention_heads=7))
drafter_case("kv-heads-not-dividing-heads", config_patch=patch(num_key_value_heads=3))
drafter_case("heads-zero", config_patch=patch(num_attention_heads=0))
drafter_case("heads-missing", config_patch=lambda c: {k: v for k, v in c.items()
                                                      if k != "num_attention_heads"})
drafter_case("intermediate-10^12", config_patch=patch(intermediate_size=10 ** 12))
drafter_case("max-depth-99", config_patch=patch(max_depth=99))
drafter_case("rope-theta-negative", config_patch=patch(rope_theta=-1.0))
drafter_case("norm-eps-string", config_patch=patch(norm_eps="1e-5"))
# A drafter config may name a preset or "dynamic-N" (EAGLE-2); anything else is refused.
drafter_case("tree-unknown-name", config_patch=patch(tree="tree-banana"))
drafter_case("tree-dynamic-0", config_patch=patch(tree="dynamic-0"))
drafter_case("head-vocab-beyond", config_patch=patch(head_vocab=[1, 512]))
drafter_case("tensor-missing", tensors_patch=without("norm.weight"))
drafter_case("tensor-extra", tensors_patch=lambda ts: {**ts, "evil": np.zeros(3, np.float32)})
drafter_case("tensor-shape-wrong", tensors_patch=lambda ts: {
    **ts, "fuse.weight": np.zeros((64, 64), np.float32)})
drafter_case("medusa-tensors", tensors_patch=lambda ts: {
    "heads.0.lm_head.weight": np.zeros((512, 64), np.float32)})


@case("drafter-medusa-heads-say-context")
def _(t):
    return chat(t, medusa=heads_folder(t / "heads", config_patch=patch(kind="context")))


@case("drafter-to-vllm")
def _(t):
    return convert(t, drafter_folder(t / "drafter"), "--to", "vllm")


# --- GGUF backbones (chat.py --model x.gguf) -------------------------------------------------

def gguf_case(name, expect=1, metadata_patch=None, **kw):
    @case(f"gguf-{name}")
    def _(t):
        metadata, tensors = gguf_llama()
        if metadata_patch is not None:
            metadata = metadata_patch(metadata)
        (t / "tiny.gguf").write_bytes(gguf_bytes(metadata, tensors, **kw))
        return chat(t, model=t / "tiny.gguf", expect=expect,
                    options=["--no-medusa"] if expect == 0 else ())


def set_meta(key, kind, value):
    def edit(metadata):
        kept = [m for m in metadata if m[0] != key]
        return kept + [(key, kind, value)]
    return edit


def drop_meta(key):
    return lambda metadata: [m for m in metadata if m[0] != key]


def info(name=None, dims=None, kind=None, offset=None):
    def edit(n, d, k, o):
        if name is None or n == name:
            return (dims if dims is not None else d, kind if kind is not None else k,
                    offset if offset is not None else o)
        return d, k, o
    return edit


gguf_case("valid", expect=0)
gguf_case("tensor-count-2^60", tensor_count=2 ** 60)
gguf_case("tensor-count-plus-one", tensor_count=len(gguf_llama()[1]) + 1)
gguf_case("kv-count-2^60", kv_count=2 ** 60)
gguf_case("version-99", version=99)
gguf_case("truncated-half", truncate=3000)
gguf_case("truncated-data", truncate=-64)
gguf_case("dims-2^40", info_patch=info("blk.0.attn_q.weight", dims=[2 ** 40, 2 ** 40]))
gguf_case("dims-zero", info_patch=info("blk.0.attn_q.weight", dims=[0, 16]))
gguf_case("n-dims-9", info_patch=info("blk.0.attn_q.weight", dims=[1] * 9))
gguf_case("type-unknown", info_patch=info("blk.0.attn_q.weight", kind=99))
gguf_case("offset-past-end", info_patch=info("blk.0.attn_q.weight", offset=2 ** 40))
gguf_case("offset-unaligned", info_patch=info("blk.0.attn_q.weight", offset=3))
gguf_case("block-count-10^7", metadata_patch=set_meta("llama.block_count", GGUF_U32, 10 ** 7))
gguf_case("block-count-0", metadata_patch=set_meta("llama.block_count", GGUF_U32, 0))
gguf_case("head-count-0", metadata_patch=set_meta("llama.attention.head_count", GGUF_U32, 0))
gguf_case("embedding-length-10^6",
          metadata_patch=set_meta("llama.embedding_length", GGUF_U32, 10 ** 6))
gguf_case("embedding-length-string",
          metadata_patch=set_meta("llama.embedding_length", GGUF_STRING, "16"))
gguf_case("context-length-2^40", metadata_patch=set_meta("llama.context_length", GGUF_U64, 2 ** 40))
gguf_case("architecture-missing", metadata_patch=drop_meta("general.architecture"))
gguf_case("tokens-missing", metadata_patch=drop_meta("tokenizer.ggml.tokens"))
gguf_case("bos-id-beyond-vocab", expect=0,  # ignored: the tokenizer then has no BOS
          metadata_patch=set_meta("tokenizer.ggml.bos_token_id", GGUF_U32, 10 ** 6))
gguf_case("array-of-arrays", metadata_patch=set_meta(
    "x.nested", GGUF_ARRAY, (GGUF_ARRAY, [(GGUF_U32, [1])] * 3)))


@case("gguf-key-length-2^60")
def _(t):
    metadata, tensors = gguf_llama()
    data = bytearray(gguf_bytes(metadata, tensors))
    data[24:32] = struct.pack("<Q", 2 ** 60)
    (t / "tiny.gguf").write_bytes(bytes(data))
    return chat(t, model=t / "tiny.gguf")


@case("gguf-array-length-2^60")
def _(t):
    metadata, tensors = gguf_llama()
    data = bytearray(gguf_bytes(metadata, tensors))
    key = b"tokenizer.ggml.tokens"
    at = data.find(key) + len(key) + 4 + 4  # value type, element type
    data[at: at + 8] = struct.pack("<Q", 2 ** 60)
    (t / "tiny.gguf").write_bytes(bytes(data))
    return chat(t, model=t / "tiny.gguf")


@case("gguf-bad-magic")
def _(t):
    (t / "tiny.gguf").write_bytes(b"GGUX" + bytes(100))
    return chat(t, model=t / "tiny.gguf")


@case("gguf-fifo")
def _(t):
    os.mkfifo(t / "tiny.gguf")
    return chat(t, model=t / "tiny.gguf")


# --- llama2.c backbones ----------------------------------------------------------------------

L2C_VALID = (16, 32, 1, 2, 2, 512, 32)


def l2c_case(name, header, expect=1, floats=None, tokenizer="tok512.model"):
    @case(f"l2c-{name}")
    def _(t):
        folder = t / "l2c"
        folder.mkdir()
        os.symlink(SHARED / "data" / "tok512.model", folder / tokenizer)
        (folder / "model.bin").write_bytes(llama2c_bytes(header, floats))
        return chat(t, model=folder / "model.bin", expect=expect,
                    options=["--no-medusa"] if expect == 0 else ())


l2c_case("valid", L2C_VALID, expect=0)
l2c_case("layers-10^6", (16, 32, 10 ** 6, 2, 2, 512, 32), floats=1000)
l2c_case("dim-2^30", (2 ** 30, 32, 1, 2, 2, 512, 32), floats=1000)
l2c_case("all-int32-max", (2 ** 31 - 1,) * 7, floats=1000)
l2c_case("vocab-2^31", (16, 32, 1, 2, 2, -(2 ** 31) + 1, 32), floats=1000)
l2c_case("heads-zero", (16, 32, 1, 0, 0, 512, 32), floats=1000)
l2c_case("dim-not-divisible", (15, 32, 1, 2, 2, 512, 32), floats=1000)
l2c_case("odd-head-dim", (6, 32, 1, 2, 2, 512, 32))
l2c_case("kv-heads-not-dividing", (16, 32, 1, 4, 3, 512, 32), floats=1000)
l2c_case("truncated", L2C_VALID, floats=1000)
l2c_case("tokenizer-larger-than-vocab", (16, 32, 1, 2, 2, 100, 32), tokenizer="tokenizer.model")
l2c_case("header-only", L2C_VALID, floats=0)


# --- command-line values ---------------------------------------------------------------------

def fixture(name):
    return SHARED / "fixtures" / "medusa" / name


for _options in (["-q", "--q-group-size", "0"], ["-q", "--q-group-size", "-64"],
                 ["-q", "--q-group-size", "48"], ["-q", "--q-bits", "99"], ["-q", "--q-bits", "0"],
                 ["--dtype", "int8"], ["--format", "nonsense"], ["--bogus"],
                 ):
    @case("cli-convert" + "".join(_options).replace("--", "-")[:40])
    def _(t, options=_options):
        return convert(t, fixture("medusa1_pt"), *options)


for _options in (["--temp", "-1"], ["--top-p", "2"], ["--tree", "nonsense"],
                 ["--seed", "abc"], ["--max-tokens", "0"], ["--tree", "[[0]]"]):
    @case("cli-chat" + "".join(_options).replace("--", "-")[:40])
    def _(t, options=_options):
        run = chat(t, options=options)
        run.only_line = True
        return run


@case("cli-base-nested-json")
def _(t):
    (t / "base.json").write_text(nested_json(100000))
    return convert(t, fixture("medusa1_pt"), "--base", t / "base.json")


@case("cli-base-not-a-dict")
def _(t):
    (t / "base.json").write_text("[1]")
    return convert(t, fixture("medusa1_pt"), "--base", t / "base.json")


@case("cli-base-hidden-string")
def _(t):
    (t / "base.json").write_text(json.dumps({"hidden_size": "64", "vocab_size": 512}))
    return convert(t, fixture("medusa1_pt"), "--base", t / "base.json")


@case("cli-convert-hub-id-not-cached")
def _(t):
    return convert(t, "org/not-in-the-cache", "--revision", "x" * 5000)


# --- chat stdin ------------------------------------------------------------------------------

def stdin_case(name, data, expect=0):
    @case(f"stdin-{name}")
    def _(t):
        run = chat(t, expect=expect, stdin=data, options=["--no-medusa"])
        run.only_line = False  # the chat header goes to stderr first
        return run


stdin_case("valid", b"Once upon a time\n")
stdin_case("invalid-utf8", b"hi \xff\xfe\xfd there\n", expect=1)
stdin_case("lone-surrogate-bytes", b"\xed\xa0\x80\n", expect=1)
stdin_case("nul-bytes", b"a\0b\0c\n")
stdin_case("1MB-line", b"once " * 200000 + b"\n")
stdin_case("control-chars", bytes(range(1, 32)) + b"\n")
stdin_case("long-command", b"/tree " + b"x" * 100000 + b"\n/stats\n")


# --- special files ---------------------------------------------------------------------------

@case("special-fifo-pt-in-folder")
def _(t):
    (t / "in").mkdir()
    os.mkfifo(t / "in" / "medusa_lm_head.pt")
    return convert(t, t / "in")


@case("special-fifo-named-pt")
def _(t):
    os.mkfifo(t / "heads.pt")
    (t / "in").mkdir()
    os.symlink(t / "heads.pt", t / "in" / "weights.pt")
    return convert(t, t / "in")


case("special-dev-zero-source")(lambda t: convert(t, "/dev/zero"))


@case("special-symlink-weights-out-of-folder")
def _(t):
    (t / "in").mkdir()
    outside = st_file(t, safetensors_bytes(medusa2_tensors()), "elsewhere.safetensors")
    os.symlink(outside, t / "in" / "medusa_lm_head.safetensors")
    return convert(t, t / "in")


@case("special-config-symlink-dev-zero")
def _(t):
    (t / "in").mkdir()
    st_file(t / "in", safetensors_bytes(medusa2_tensors()))
    os.symlink("/dev/zero", t / "in" / "config.json")
    return convert(t, t / "in")


# --- --force -----------------------------------------------------------------------------------

@case("force-unrelated-folder")
def _(t):
    out = t / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("more")
    return convert(t, fixture("medusa1_pt"), "--force", keep=[out])


@case("force-folder-with-foreign-config")
def _(t):
    out = t / "out"
    out.mkdir()
    (out / "config.json").write_text('{"name": "my project"}')
    (out / "main.py").write_text("print(1)")
    return convert(t, fixture("medusa1_pt"), "--force", keep=[out])


@case("force-regular-file")
def _(t):
    (t / "out").write_text("a file")
    return convert(t, fixture("medusa1_pt"), "--force", keep=[t / "out"])


@case("force-heads-folder")
def _(t):
    heads_folder(t / "out")
    return convert(t, fixture("medusa1_pt"), "--force", expect=0)


@case("force-empty-folder")
def _(t):
    (t / "out").mkdir()
    return convert(t, fixture("medusa1_pt"), "--force", expect=0)


case("force-missing-without-force-valid")(lambda t: convert(t, fixture("medusa1_pt"), expect=0))


# --- signals and injected write failures (python -c around the convert CLI) ----------------

def convert_with(t, prelude: str, *options, source=None, output=None, expect=1,
                 existing=False, during=None) -> Run:
    """convert.py run by ``python -c`` after ``prelude`` (which patches a function to
    fail or signal mid-write); ``existing``: a heads folder is at the output already."""
    out = t / "out"
    if existing:
        heads_folder(out)
    argv = [str(source or fixture("medusa1_pt")), "-o", str(out), *map(str, options)]
    code = (
        "import errno, os, signal, sys, time, runpy\n"
        "import mlx.core as mx\n"
        f"{prelude}\n"
        f"sys.argv = ['convert.py', *{argv!r}]\n"
        "runpy.run_path('convert.py', run_name='__main__')\n"
    )
    return Run(["-c", code], expect=expect, output=output or out,
               keep=[out] if existing else [], during=during)


def partial_write(then: str) -> str:
    return ("real_save = mx.save_safetensors\n"
            "def save(path, *a, **k):\n"
            "    open(path, 'wb').write(b'partial tensor data')\n"
            f"    {then}\n"
            "mx.save_safetensors = save\n")


for _sig, _code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
    for _existing in (False, True):
        _suffix = "-over-existing" if _existing else ""

        @case(f"signal-{_sig.name}-mid-write{_suffix}")
        def _(t, sig=_sig, code=_code, existing=_existing):
            return convert_with(t, partial_write(f"os.kill(os.getpid(), {int(sig)}); "
                                                 "time.sleep(5)"),
                                "--force", expect=code, existing=existing)

    @case(f"signal-{_sig.name}-from-outside")
    def _(t, sig=_sig, code=_code):
        marker = t / "writing"

        def send(proc):
            deadline = time.monotonic() + 30
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(sig)

        return convert_with(t, partial_write(f"open({str(marker)!r}, 'w').close(); "
                                             "time.sleep(30)"),
                            expect=code, during=send)


case("inject-tensor-write-enospc")(lambda t: convert_with(
    t, partial_write("raise OSError(errno.ENOSPC, 'No space left on device')"),
    "--force", existing=True))
case("inject-config-write-enospc")(lambda t: convert_with(
    t, "import pathlib\n"
       "def full(self, *a, **k):\n"
       "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
       "pathlib.Path.write_text = full\n", "--force", existing=True))
for _which, _test in (("new-into-place", "str(b).endswith('/out')"),
                      ("old-aside", "str(b).endswith('/previous')")):
    case(f"inject-rename-{_which}-fails")(lambda t, test=_test: convert_with(
        t, "real, failed = os.replace, []\n"
           "def replace(a, b):\n"
           f"    if {test} and not failed:\n"
           "        failed.append(b)\n"
           "        raise OSError(errno.EXDEV, 'Invalid cross-device link')\n"
           "    return real(a, b)\n"
           "os.replace = replace\n", "--force", existing=True))
case("inject-valid-over-existing")(lambda t: convert_with(t, "", "--force", existing=True,
                                                          expect=0))


def backbone_out_with(t, prelude: str) -> Run:
    """--backbone-out over an existing heads folder, with ``prelude`` patching mlx-lm."""
    backbone = t / "backbone"
    return convert_with(t, "import mlx_lm.convert\n" + prelude, "--force", "--backbone-out",
                        backbone, source=index_folder(t), output=backbone, existing=True)


case("inject-backbone-out-fails-after-heads")(lambda t: backbone_out_with(
    t, "def fail(*a, **k):\n"
       "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
       "sys.modules['mlx_lm.convert'].convert = fail\n"))
case("inject-backbone-rename-fails-after-heads-placed")(lambda t: backbone_out_with(
    t, "def fake(src, dst, **k):\n"
       "    os.makedirs(dst)\n"
       "    open(os.path.join(dst, 'config.json'), 'w').write('{}')\n"
       "sys.modules['mlx_lm.convert'].convert = fake\n"
       "real = os.replace\n"
       "def replace(a, b):\n"
       "    if str(b).endswith('/backbone'):\n"
       "        raise OSError(errno.EXDEV, 'Invalid cross-device link')\n"
       "    return real(a, b)\n"
       "os.replace = replace\n"))


@case("inject-backbone-config-unusable")
def _(t):
    """mlx_lm.convert itself fails on the model's config (a TypeError inside mlx-lm)."""
    folder = index_folder(t)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    heads_folder(t / "out")
    return convert(t, folder, "--force", "--backbone-out", t / "backbone", keep=[t / "out"])
