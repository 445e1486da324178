"""The writing half of the converter: MLX heads from parsed checkpoints, the base-model
check, atomic folder output and the export back to vLLM's Medusa format."""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from ..errors import MedusaError, OutputError, UsageError
from ..heads import QUANT_BITS, QUANT_GROUP_SIZES, HeadsArgs, MedusaHeads, load_heads
from ..safe_files import is_int, read_json
from .formats import SourceHeads
from .tensor_files import ConversionError

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
FLOAT16_MAX = 65504.0


def build_heads(checkpoint: SourceHeads, dtype: str) -> MedusaHeads:
    args = HeadsArgs(
        hidden_size=checkpoint.hidden_size,
        vocab_size=checkpoint.vocab_size,
        num_heads=checkpoint.num_heads,
        num_layers=checkpoint.num_layers,
        shared_lm_head=checkpoint.shared_lm_head,
    )
    # MLX is lazy: the random init of MedusaHeads is replaced before it is ever computed.
    heads = MedusaHeads(args)
    target = DTYPES[dtype]
    for head, weights in zip(heads.heads, checkpoint.heads):
        for block, (weight, bias) in zip(head.blocks, weights.blocks):
            block.linear.weight = _cast(weight, target)
            block.linear.bias = _cast(bias, target)
        if weights.lm_head is not None:
            head.lm_head.weight = _cast(weights.lm_head, target)
    mx.eval(heads.parameters())
    return heads


def _cast(array: mx.array, target) -> mx.array:
    if target == mx.float16 and array.size and \
            float(mx.max(mx.abs(array.astype(mx.float32)))) > FLOAT16_MAX:
        raise ConversionError("weights exceed the float16 range: use --dtype bfloat16 or float32")
    return array.astype(target)


def parameter_count(heads: MedusaHeads) -> int:
    args = heads.args
    per_head = args.num_layers * (args.hidden_size * args.hidden_size + args.hidden_size)
    if not args.shared_lm_head:
        per_head += args.vocab_size * args.hidden_size
    return per_head * args.num_heads


def quantize_heads(heads: MedusaHeads, bits: int, group_size: int) -> bool:
    """Quantise each head's own vocabulary projection (the bulk of the parameters); the
    small residual blocks stay in float. Returns False when there is nothing to quantise."""
    if heads.args.shared_lm_head:
        return False
    check_quantization(bits, group_size)
    if heads.args.hidden_size % group_size:
        raise ConversionError(
            f"hidden size {heads.args.hidden_size} is not a multiple of --q-group-size {group_size}"
        )
    # Same predicate as heads.load_heads, so the folder loads back as written.
    nn.quantize(heads, group_size=group_size, bits=bits,
                class_predicate=lambda path, module: path.endswith("lm_head"))
    mx.eval(heads.parameters())
    return True


def check_quantization(bits, group_size) -> None:
    """Values ``mx.quantize`` accepts (others crashed it: a group size of 0 is SIGFPE)."""
    if not (is_int(bits) and bits in QUANT_BITS):
        raise UsageError(f"--q-bits {bits!r}: choose from {', '.join(map(str, QUANT_BITS))}")
    if not (is_int(group_size) and group_size in QUANT_GROUP_SIZES):
        raise UsageError(f"--q-group-size {group_size!r}: choose from "
                          f"{', '.join(map(str, QUANT_GROUP_SIZES))}")


def read_base_config(base: Path) -> dict:
    path = base / "config.json" if base.is_dir() else base
    if not (path.exists() or path.is_symlink()):
        raise ConversionError(f"--base {base}: no config.json there")
    config = read_json(path, "--base config")
    # Multimodal configs keep the language model's sizes in text_config.
    config = config.get("text_config", config)
    if not isinstance(config, dict):
        raise ConversionError(f"--base {path}: text_config is not a dict")
    for key in ("hidden_size", "vocab_size"):
        if config.get(key) is not None and not (is_int(config[key]) and config[key] > 0):
            raise ConversionError(f"--base {path}: {key} is {config[key]!r:.40}, not a size")
    return config


# Config keys mlx-lm models read their layer count from.
_LAYER_COUNT_KEYS = {"num_hidden_layers", "n_layer", "n_layers", "num_layers"}


def base_dimensions(base: Path) -> tuple[Optional[int], Optional[int]]:
    """(hidden size, vocabulary) of the base model, read from the model itself: its
    mlx-lm class is built from config.json without weights and traced on one token
    (MLX works out shapes without computing, so nothing the size of the model is
    allocated). Config keys differ by architecture (d_model, n_embd, text_config...);
    the model's own hidden state and logits do not. Falls back to the config's
    ``hidden_size`` / ``vocab_size`` when mlx-lm cannot build the class. The layer
    count is capped at 2 for the trace: the sizes do not depend on depth, and a
    config asking for 10^8 layers must not build them."""
    from mlx_lm.utils import _get_classes

    from ..backbone import find_body, hidden_and_logits

    text = read_base_config(base)  # a small regular JSON file with sane sizes
    config = read_json(base / "config.json" if base.is_dir() else base, "--base config")
    for part in (config, config.get("text_config")):
        for key in _LAYER_COUNT_KEYS & set(part if isinstance(part, dict) else ()):
            if is_int(part[key]) and part[key] > 2:
                part[key] = 2
    try:
        model_class, args_class = _get_classes(config)
        backbone = model_class(args_class.from_dict(config))
        hidden, logits = hidden_and_logits(backbone, find_body(backbone), mx.array([[0]]))
        return hidden.shape[-1], logits.shape[-1]
    except (ValueError, KeyError, TypeError, AttributeError, ImportError):
        return text.get("hidden_size"), text.get("vocab_size")


def check_against_base(checkpoint: SourceHeads, base: Path) -> dict:
    """Fail naming exactly what differs; fill in the vocab size of shared-lm_head heads."""
    config = read_base_config(base)
    hidden, vocab = base_dimensions(base)
    problems = []
    if hidden is not None and hidden != checkpoint.hidden_size:
        problems.append(f"hidden size {checkpoint.hidden_size} != base hidden_size {hidden}")
    if vocab is not None and not checkpoint.shared_lm_head and vocab != checkpoint.vocab_size:
        problems.append(f"lm_head vocab {checkpoint.vocab_size} != base vocab_size {vocab}")
    if problems:
        raise ConversionError(f"heads do not fit the base model {base}: " + "; ".join(problems))
    if checkpoint.shared_lm_head and vocab is not None:
        checkpoint.vocab_size = vocab
    return config


def check_output(output: Path, force: bool) -> None:
    """Refuse to touch an existing ``output`` unless ``force`` is given and it is a folder
    this converter could have written (or an empty one): ``--force`` must never delete
    a folder of unrelated files."""
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise OutputError(f"{output} already exists (use --force to replace it)")
    if output.is_symlink() or not output.is_dir():
        raise OutputError(f"{output} is not a folder; --force only replaces a heads folder "
                          "or an empty folder")
    if any(output.iterdir()) and not _written_by_us(output):
        raise OutputError(f"{output} is not a heads or model folder (no medusa-mlx, vLLM or "
                          "mlx-lm config.json) and not empty: not replacing it, even with --force")


def _written_by_us(folder: Path) -> bool:
    try:
        config = read_json(folder / "config.json")
    except (MedusaError, OSError):
        return False
    return config.get("format") == "medusa-mlx" or "model_type" in config


def write_atomically(output: Path, force: bool, write: Callable[[Path], None]) -> None:
    """:func:`write_outputs` for one output."""
    write_outputs([(output, write)], force)


def write_outputs(outputs: List[Tuple[Path, Callable[[Path], None]]], force: bool) -> None:
    """Run each ``write(folder)`` on a temp folder beside its output; only when every one
    has succeeded, move them into place (previous outputs aside first).

    On any failure, including SIGINT/SIGTERM and a failing rename, every output is as
    it was before (the new ones removed, the previous ones moved back) and no temp
    folder is left."""
    for output, _ in outputs:
        check_output(output, force)
    staged, moved, placed = [], [], []
    try:
        for output, write in outputs:
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
            staged.append(tmp)
            # mkdtemp makes the folder private (0700); the output should get the usual mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            write(tmp)
        for (output, _), tmp in zip(outputs, staged):
            if output.exists():
                # os.replace cannot replace a non-empty folder: move the old one aside.
                old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
                moved.append((output, old))
                os.replace(output, old / "previous")
            os.replace(tmp, output)
            placed.append(output)
    except BaseException:
        for output in placed:
            shutil.rmtree(output, ignore_errors=True)
        for output, old in moved:
            if (old / "previous").exists() and not output.exists():
                os.replace(old / "previous", output)
        raise
    finally:
        for path in staged + [old for _, old in moved]:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- export to vLLM ------------------------------------------------------------------------

def load_mlx_heads(folder: Path) -> MedusaHeads:
    config_path = folder / "config.json"
    if not (config_path.exists() or config_path.is_symlink()):
        raise ConversionError(f"{folder} is not a medusa-mlx heads folder (no config.json)")
    return load_heads(folder)


def vllm_tensors(heads: MedusaHeads, dtype: str) -> dict:
    """vLLM Medusa names: ``blocks.{h}.layers.{l}.weight|bias`` and ``lm_heads.{h}.weight``."""
    if heads.args.shared_lm_head:
        raise ConversionError(
            "these heads share the base model's lm_head; vLLM's Medusa needs one lm_head "
            "per head, so they cannot be exported"
        )
    target = DTYPES[dtype]
    out = {}
    for h, head in enumerate(heads.heads):
        for l, block in enumerate(head.blocks):
            out[f"blocks.{h}.layers.{l}.weight"] = block.linear.weight.astype(target)
            out[f"blocks.{h}.layers.{l}.bias"] = block.linear.bias.astype(target)
        proj = head.lm_head
        if isinstance(proj, nn.QuantizedLinear):
            weight = mx.dequantize(proj.weight, proj.scales, proj.biases,
                                   group_size=proj.group_size, bits=proj.bits)
        else:
            weight = proj.weight
        out[f"lm_heads.{h}.weight"] = weight.astype(target)
    return out


def vllm_config(heads: MedusaHeads, extra: Optional[dict] = None) -> dict:
    args = heads.args
    config = {
        "model_type": "medusa",
        "architectures": ["MedusaModel"],
        "num_heads": args.num_heads,
        "num_hidden_layers": args.num_layers,
        "hidden_size": args.hidden_size,
        "vocab_size": args.vocab_size,
        "truncated_vocab_size": args.vocab_size,
        # vLLM's ResidualBlock has no bias unless this is set; ours always have one.
        "medusa_fc_bias": True,
    }
    config.update(extra or {})
    return config


def write_vllm(folder: Path, heads: MedusaHeads, dtype: str, extra: Optional[dict]) -> None:
    tensors = vllm_tensors(heads, dtype)
    mx.save_safetensors(str(folder / "model.safetensors"), tensors, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(vllm_config(heads, extra), indent=2) + "\n")
