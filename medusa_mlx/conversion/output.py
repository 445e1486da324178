"""The writing half of the converter: MLX heads from parsed checkpoints, the base-model
check, atomic folder output and the export back to vLLM's Medusa format."""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .formats import SourceHeads
from ..heads import HeadsArgs, MedusaHeads, load_heads
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
    if heads.args.hidden_size % group_size:
        raise ConversionError(
            f"hidden size {heads.args.hidden_size} is not a multiple of --q-group-size {group_size}"
        )
    # Same predicate as heads.load_heads, so the folder loads back as written.
    nn.quantize(heads, group_size=group_size, bits=bits,
                class_predicate=lambda path, module: path.endswith("lm_head"))
    mx.eval(heads.parameters())
    return True


def read_base_config(base: Path) -> dict:
    path = base / "config.json" if base.is_dir() else base
    if not path.is_file():
        raise ConversionError(f"--base {base}: no config.json there")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"--base {path} is not valid JSON ({e})") from None
    # Multimodal configs keep the language model's sizes in text_config.
    return config.get("text_config", config) if isinstance(config, dict) else {}


def check_against_base(checkpoint: SourceHeads, base: Path) -> dict:
    """Fail naming exactly what differs; fill in the vocab size of shared-lm_head heads."""
    config = read_base_config(base)
    hidden, vocab = config.get("hidden_size"), config.get("vocab_size")
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


def write_atomically(output: Path, force: bool, write: Callable[[Path], None]) -> None:
    """Run ``write(folder)`` on a temp folder beside ``output``, then rename it into place.

    On any failure nothing is left at ``output`` and the temp folder is removed."""
    if output.exists() and not force:
        raise ConversionError(f"{output} already exists (use --force to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    old = None
    try:
        # mkdtemp makes the folder private (0700); the output should get the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        write(tmp)
        if output.exists():
            # Move the old output aside first: os.replace cannot replace a non-empty folder.
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, old / "previous")
        try:
            os.replace(tmp, output)
        except OSError:
            if old is not None:
                os.replace(old / "previous", output)  # put the old output back
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- export to vLLM ------------------------------------------------------------------------

def load_mlx_heads(folder: Path) -> MedusaHeads:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder} is not a medusa-mlx heads folder (no config.json)")
    try:
        return load_heads(folder)
    except (ValueError, KeyError) as e:
        raise ConversionError(f"cannot read MLX heads from {folder}: {e}") from None


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
