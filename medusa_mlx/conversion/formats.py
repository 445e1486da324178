"""Find and parse the Medusa head checkpoint formats in the wild.

=============  =========================================  ==================================
format         tensor names                               where
=============  =========================================  ==================================
medusa1        ``{h}.{l}.linear.weight|bias``,            ``medusa_lm_head.pt`` (torch)
               ``{h}.{L}.weight`` (own lm_head)
medusa2        ``{h}.{l}.linear.weight|bias`` only        ``medusa_lm_head.safetensors``
               (the base model's lm_head is shared)
medusa2-full   ``...medusa_head.{h}.{l}...`` next to      the model's (sharded) safetensors
               the backbone's tensors                     or ``pytorch_model*.bin``
vllm           ``blocks.{h}.layers.{l}.weight|bias``,     ``model.safetensors``, config
               ``lm_heads.{h}.weight``, ``token_map``     ``model_type: medusa``
=============  =========================================  ==================================

Head and layer counts always come from the tensor names: released Medusa-1 configs
give wrong head counts.
"""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from ..errors import ConfigError
from ..safe_files import MAX_VOCAB, inside, is_int, read_json, regular_file
from .tensor_files import ConversionError, TensorFiles, open_sharded, open_tensor_file

FORMATS = ("medusa1", "medusa2", "medusa2-full", "vllm")
DESCRIPTIONS = {
    "medusa1": "Medusa-1 heads (own lm_head per head)",
    "medusa2": "Medusa v2 heads (blocks only, base lm_head shared)",
    "medusa2-full": "Medusa-2 full model (heads extracted from the model's tensors)",
    "vllm": "vLLM Medusa draft model",
}

HEADS_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt", "medusa_lm_head.bin")
MODEL_FILES = ("model.safetensors.index.json", "model.safetensors",
               "pytorch_model.bin.index.json", "pytorch_model.bin")

# Truncated vLLM vocabularies keep a sizeable share of the tokens (e.g. 32k of 128k, 4x);
# a header claiming 1 row of 10^6 would expand a tiny file into gigabytes of zeros.
MAX_EXPANSION = 64

# Medusa repo layout: head h = nn.Sequential(ResBlock * L, Linear(H, V)).
MEDUSA_BLOCK = re.compile(r"^(\d+)\.(\d+)\.linear\.(weight|bias)$")
MEDUSA_PROJ = re.compile(r"^(\d+)\.(\d+)\.weight$")
FULL_MODEL_PREFIX = re.compile(r"^(?:.*\.)?medusa_head\.")
# vLLM layout (vllm/model_executor/models/medusa.py); load_weights strips "medusa_heads.".
VLLM_BLOCK = re.compile(r"^(?:medusa_heads\.)?blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)$")
VLLM_PROJ = re.compile(r"^(?:medusa_heads\.)?lm_heads\.(\d+)\.weight$")
VLLM_TOKEN_MAP = re.compile(r"^(?:medusa_heads\.)?token_map$")


@dataclass
class HeadWeights:
    blocks: List[Tuple[mx.array, mx.array]]  # (W [H, H] as [out, in], b [H]) per layer
    lm_head: Optional[mx.array]  # [V, H]; None when the base model's lm_head is shared


@dataclass
class SourceHeads:
    """Head tensors read from a source checkpoint (torch Medusa-1/2, vLLM), before
    they become MLX heads (not a training checkpoint: see ``training.checkpoints``)."""

    format: str
    heads: List[HeadWeights]
    hidden_size: int
    vocab_size: Optional[int]
    source_config: dict
    files: List[Path]
    notes: List[str] = field(default_factory=list)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def num_layers(self) -> int:
        return len(self.heads[0].blocks)

    @property
    def shared_lm_head(self) -> bool:
        return self.heads[0].lm_head is None


@dataclass
class Source:
    """Where the tensors are, which layout they use, and the config found next to them."""

    format: str
    tensors: TensorFiles
    config: dict


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not (path.exists() or path.is_symlink()):
        return {}
    return read_json(inside(folder, path.name, "config"), "config")


def detect(path: Path, forced: Optional[str] = None) -> Source:
    """Pick the weights file(s) in ``path`` (a folder or a file) and their format."""
    if path.is_dir():
        config = read_config(path)
        tensors = _open_folder(path, config, forced)
    elif path.exists():
        regular_file(path, "checkpoint")
        config = read_config(path.parent)
        tensors = _open_file(path)
    else:
        raise ConversionError(f"no such file or folder: {path}")
    fmt = forced or _format_from_names(tensors.names(), config)
    if fmt is None:
        sample = ", ".join(tensors.names()[:4]) or "no tensors"
        raise ConversionError(
            f"{path} holds no Medusa head tensors (found {sample}); "
            "expected medusa1/medusa2/medusa2-full/vllm names (see --help)"
        )
    return Source(fmt, tensors, config)


def _open_file(path: Path) -> TensorFiles:
    if path.name.endswith(".index.json"):
        return open_sharded(path)
    return open_tensor_file(path)


def _open_folder(folder: Path, config: dict, forced: Optional[str]) -> TensorFiles:
    wants_model = forced in ("vllm", "medusa2-full") or config.get("model_type") == "medusa"
    names = MODEL_FILES + HEADS_FILES if wants_model else HEADS_FILES + MODEL_FILES
    for name in names:
        if (folder / name).exists() or (folder / name).is_symlink():
            return _open_file(_weights_file(folder, name))
    # Some repos use other shard/file names: take the only weights file if there is one.
    candidates = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt"))
    if len(candidates) == 1:
        return _open_file(_weights_file(folder, candidates[0].name))
    raise ConversionError(
        f"no Medusa checkpoint found in {folder} (looked for {', '.join(HEADS_FILES)}, "
        f"{', '.join(MODEL_FILES)})"
    )


def _weights_file(folder: Path, name: str) -> Path:
    """A weights file of ``folder``: a regular file inside it (no FIFO, no device, no
    link to elsewhere)."""
    return regular_file(inside(folder, name, "weights file"), "weights file")


def _format_from_names(names: List[str], config: dict) -> Optional[str]:
    if any(VLLM_BLOCK.match(n) or VLLM_PROJ.match(n) for n in names):
        return "vllm"
    if any(FULL_MODEL_PREFIX.match(n) for n in names):
        return "medusa2-full"
    if any(MEDUSA_BLOCK.match(n) for n in names):
        has_proj = any(MEDUSA_PROJ.match(n) for n in names)
        return "medusa1" if has_proj else "medusa2"
    if any(MEDUSA_PROJ.match(n) for n in names):  # heads with zero residual blocks
        return "medusa1"
    return None


def parse(source: Source, expand_vocab: bool = False) -> SourceHeads:
    """Load the head tensors of ``source`` into a :class:`SourceHeads`."""
    if source.format == "vllm":
        return _parse_vllm(source, expand_vocab)
    names = source.tensors.names()
    if source.format == "medusa2-full":
        # name inside the checkpoint -> name in the Medusa-1 layout
        renamed = {FULL_MODEL_PREFIX.sub("", n): n for n in names if FULL_MODEL_PREFIX.match(n)}
    else:
        renamed = {n: n for n in names}
    if not renamed:
        raise ConversionError(f"no {source.format} head tensors in {_files(source)}")
    arrays = source.tensors.load(list(renamed.values()))
    blocks, projections = {}, {}
    for short, original in renamed.items():
        if m := MEDUSA_BLOCK.match(short):
            blocks[int(m[1]), int(m[2]), m[3]] = arrays[original]
        elif m := MEDUSA_PROJ.match(short):
            projections[int(m[1]), int(m[2])] = arrays[original]
        else:
            raise ConversionError(f"unexpected tensor {original!r} in {_files(source)}")
    heads = _assemble(blocks, projections, source, projection_after_blocks=True)
    checkpoint = _checkpoint(source, heads)
    if source.format == "medusa1" and checkpoint.shared_lm_head:
        raise ConversionError(f"{_files(source)} has no per-head lm_head (try --format medusa2)")
    if source.format == "medusa2" and not checkpoint.shared_lm_head:
        checkpoint.format = "medusa1"  # B's file name, A's content: report what it is
    _note_config_mismatch(checkpoint, source.config, "medusa_num_heads", "medusa_num_layers")
    return checkpoint


def _parse_vllm(source: Source, expand_vocab: bool) -> SourceHeads:
    names = source.tensors.names()
    wanted = [n for n in names if VLLM_BLOCK.match(n) or VLLM_PROJ.match(n)
              or VLLM_TOKEN_MAP.match(n)]
    extra = [n for n in names if n not in wanted]
    if extra:
        raise ConversionError(f"unexpected tensor {extra[0]!r} in {_files(source)}")
    arrays = source.tensors.load(wanted)
    blocks, projections, token_map = {}, {}, None
    for name, value in arrays.items():
        if m := VLLM_BLOCK.match(name):
            blocks[int(m[1]), int(m[2]), m[3]] = value
        elif m := VLLM_PROJ.match(name):
            projections[int(m[1]), None] = value
        else:
            token_map = value
    heads = _assemble(blocks, projections, source, projection_after_blocks=False)
    checkpoint = _checkpoint(source, heads)
    _expand_truncated_vocab(checkpoint, source.config, token_map, expand_vocab)
    scale = source.config.get("logit_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"config logit_scale {scale!r:.40} is not a finite number")
    if not checkpoint.shared_lm_head and scale != 1.0:
        # vLLM multiplies the draft logits by logit_scale; fold it into the projection.
        for head in checkpoint.heads:
            head.lm_head = head.lm_head * scale
        checkpoint.notes.append(f"folded logit_scale={scale} into the lm_heads")
    _note_config_mismatch(checkpoint, source.config, "num_heads", "num_hidden_layers")
    return checkpoint


def _expand_truncated_vocab(checkpoint, config, token_map, expand_vocab):
    """vLLM may keep only the rows of frequent tokens: row i of ``lm_heads`` scores token
    ``token_map[i]`` and every other token gets -inf. A bias-free projection cannot say
    -inf, so ``expand_vocab`` puts the rows at their token ids and fills the rest with
    zeros (those tokens then score 0 instead of -inf)."""
    if checkpoint.shared_lm_head:
        return
    rows = checkpoint.heads[0].lm_head.shape[0]
    full = config.get("vocab_size") or rows
    if not is_int(full) or not 0 < full <= MAX_VOCAB:
        raise ConfigError(f"config vocab_size {full!r:.40} is not a vocabulary size "
                          f"(1 to {MAX_VOCAB})")
    if rows == full:
        if token_map is not None:
            checkpoint.notes.append("ignored token_map: the lm_heads already cover the vocab")
        checkpoint.vocab_size = full
        return
    if rows > full:
        raise ConversionError(f"lm_heads have {rows} rows but config vocab_size is {full}")
    if token_map is None:
        raise ConversionError(
            f"lm_heads cover {rows} of {full} tokens (truncated vocab) and there is no "
            "token_map saying which: cannot place them"
        )
    if full > MAX_EXPANSION * rows:
        raise ConversionError(f"lm_heads cover {rows} of {full} tokens: expanding them "
                              f"{full // rows}x is beyond the {MAX_EXPANSION}x allowed")
    if not expand_vocab:
        raise ConversionError(
            f"lm_heads cover {rows} of {full} tokens (truncated vocab with token_map); "
            "pass --expand-vocab to place them at their token ids (other tokens score 0, "
            "not -inf as in vLLM)"
        )
    ids = token_map.astype(mx.int64).reshape(-1)
    if ids.size != rows or int(ids.min()) < 0 or int(ids.max()) >= full \
            or len(set(ids.tolist())) != rows:
        raise ConversionError("token_map is not a list of distinct token ids, one per row")
    for head in checkpoint.heads:
        expanded = mx.zeros((full, head.lm_head.shape[1]), dtype=head.lm_head.dtype)
        expanded[ids] = head.lm_head
        head.lm_head = expanded
    checkpoint.vocab_size = full
    checkpoint.notes.append(
        f"expanded truncated lm_heads {rows} -> {full} rows via token_map (others zero)"
    )


def _assemble(blocks: Dict, projections: Dict, source: Source,
              projection_after_blocks: bool) -> List[HeadWeights]:
    """blocks[(h, l, 'weight'|'bias')], projections[(h, index)] -> checked heads."""
    head_ids = sorted({h for h, _, _ in blocks} | {h for h, _ in projections})
    where = _files(source)
    if head_ids != list(range(len(head_ids))):
        raise ConversionError(f"head numbers in {where} are not 0..K-1: {head_ids}")
    layers_of = {h: sorted({l for hh, l, _ in blocks if hh == h}) for h in head_ids}
    num_layers = len(layers_of[0])
    heads = []
    for h in head_ids:
        if layers_of[h] != list(range(num_layers)):
            raise ConversionError(
                f"head {h} in {where} has layers {layers_of[h]}, head 0 has {num_layers}"
            )
        layer_list = []
        for l in range(num_layers):
            if (h, l, "weight") not in blocks:
                raise ConversionError(f"head {h} layer {l} in {where} has a bias but no weight")
            weight = blocks[h, l, "weight"]
            # vLLM without medusa_fc_bias has no biases: a zero bias is the same block.
            bias = blocks.get((h, l, "bias"), mx.zeros((weight.shape[0],), dtype=weight.dtype))
            layer_list.append((weight, bias))
        proj_keys = [k for k in projections if k[0] == h]
        if projection_after_blocks and any(k[1] != num_layers for k in proj_keys):
            raise ConversionError(
                f"head {h} in {where}: lm_head expected at index {num_layers}, "
                f"found {[k[1] for k in proj_keys]}"
            )
        heads.append(HeadWeights(layer_list, projections[proj_keys[0]] if proj_keys else None))
    owns = [head.lm_head is not None for head in heads]
    if any(owns) and not all(owns):
        raise ConversionError(f"only some heads in {where} have an lm_head")
    _check_shapes(heads, where)
    return heads


def _check_shapes(heads: List[HeadWeights], where: str) -> None:
    if heads[0].blocks:
        hidden = heads[0].blocks[0][0].shape[-1]
    elif heads[0].lm_head is not None:
        hidden = heads[0].lm_head.shape[-1]
    else:
        raise ConversionError(f"{where}: heads have neither blocks nor lm_head")
    vocab = heads[0].lm_head.shape[0] if heads[0].lm_head is not None else None
    for h, head in enumerate(heads):
        for l, (weight, bias) in enumerate(head.blocks):
            if tuple(weight.shape) != (hidden, hidden) or tuple(bias.shape) != (hidden,):
                raise ConversionError(
                    f"{where}: head {h} layer {l} has weight {tuple(weight.shape)} and bias "
                    f"{tuple(bias.shape)}, expected ({hidden}, {hidden}) and ({hidden},)"
                )
        if head.lm_head is not None and tuple(head.lm_head.shape) != (vocab, hidden):
            raise ConversionError(
                f"{where}: head {h} lm_head is {tuple(head.lm_head.shape)}, "
                f"expected ({vocab}, {hidden})"
            )


def _checkpoint(source: Source, heads: List[HeadWeights]) -> SourceHeads:
    first = heads[0]
    hidden = first.blocks[0][0].shape[-1] if first.blocks else first.lm_head.shape[-1]
    vocab = first.lm_head.shape[0] if first.lm_head is not None else None
    if vocab is None and isinstance(source.config.get("vocab_size"), int):
        vocab = source.config["vocab_size"]
    return SourceHeads(source.format, heads, int(hidden), vocab, source.config,
                            source.tensors.files)


def _note_config_mismatch(checkpoint, config, heads_key, layers_key):
    for key, found, what in ((heads_key, checkpoint.num_heads, "heads"),
                             (layers_key, checkpoint.num_layers, "layers")):
        claimed = config.get(key)
        if isinstance(claimed, int) and claimed != found:
            checkpoint.notes.append(
                f"config.json claims {key}={claimed}; the tensors hold {found} {what} (used)"
            )


def _files(source: Source) -> str:
    files = source.tensors.files
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
