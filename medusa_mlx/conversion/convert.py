"""Convert Medusa head checkpoints (torch / safetensors / vLLM) to the MLX heads format.

Run ``python -m medusa_mlx convert --help`` (or ``python convert.py --help``).
"""

from argparse import RawDescriptionHelpFormatter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .output import (
    DTYPES,
    build_heads,
    check_against_base,
    check_output,
    check_quantization,
    folder_size,
    load_mlx_heads,
    parameter_count,
    quantize_heads,
    write_atomically,
    write_outputs,
    write_vllm,
)
from .formats import DESCRIPTIONS, FORMATS, detect, parse
from ..cli import ArgumentParser, run_cli
from ..heads import save_heads
from ..model import is_context
from .hub import resolve
from .tensor_files import ConversionError

EXAMPLES = """\
examples:
  # Medusa-1 heads from the hub (medusa_lm_head.pt is read without torch)
  python convert.py FasterDecoding/medusa-vicuna-7b-v1.3 -o medusa-vicuna-mlx
  # a local file, checked against the mlx-lm base model it will run on
  python convert.py ./medusa_lm_head.pt -o heads --base ./vicuna-7b-mlx
  # keep exact values / quantise the per-head lm_heads to 4 bits
  python convert.py ./heads_dir -o heads-f32 --dtype float32
  python convert.py ./heads_dir -o heads-q4 -q --q-bits 4 --q-group-size 64
  # heads of a Medusa-2 full model (only the shards holding heads are downloaded)
  python convert.py org/medusa2-model -o heads --revision main
  # vLLM Medusa draft model in, and MLX heads back out to vLLM
  python convert.py ./vllm-medusa -o heads
  python convert.py ./heads -o vllm-medusa --to vllm

formats (detected from the files; --format overrides):
  medusa1       medusa_lm_head.pt/.safetensors: {h}.{l}.linear.*, {h}.{L}.weight
  medusa2       medusa_lm_head.safetensors: blocks only, base lm_head shared
  medusa2-full  model shards with medusa_head.{h}.{l}... next to the backbone
  vllm          blocks.{h}.layers.{l}.*, lm_heads.{h}.weight, model_type: medusa
"""


@dataclass
class ConversionReport:
    format: str
    num_heads: int
    num_layers: int
    hidden_size: int
    vocab_size: Optional[int]
    shared_lm_head: bool
    parameters: int
    output: Path
    output_bytes: int
    dtype: str
    quantization: Optional[dict] = None
    notes: List[str] = field(default_factory=list)


def convert(
    source: str,
    output: str,
    *,
    fmt: Optional[str] = None,
    to: str = "mlx",
    revision: Optional[str] = None,
    dtype: str = "float16",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    base: Optional[str] = None,
    force: bool = False,
    expand_vocab: bool = False,
    backbone_out: Optional[str] = None,
) -> ConversionReport:
    """Convert ``source`` (folder, file or hub id) into the folder ``output``.

    Raises a :class:`~medusa_mlx.errors.MedusaError` subclass for bad input; nothing is
    left at ``output`` (or ``backbone_out``) unless everything succeeded."""
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    check_quantization(q_bits, q_group_size)
    output_path = Path(output)
    check_output(output_path, force)
    if to == "vllm":
        return _export_vllm(source, output_path, revision, dtype, force)
    if to != "mlx":
        raise ConversionError(f"unknown --to {to!r} (mlx or vllm)")
    if fmt is not None and fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")

    path = resolve(source, revision, with_backbone=backbone_out is not None)
    found = detect(path, fmt)
    if backbone_out is not None:
        from .backbone import check_backbone_request  # mlx_lm is imported only when needed

        check_backbone_request(path, found, Path(backbone_out), force)
    checkpoint = parse(found, expand_vocab=expand_vocab)
    if base is not None:
        check_against_base(checkpoint, Path(base))
    heads = build_heads(checkpoint, dtype)
    parameters = parameter_count(heads)
    quantization = None
    if quantize:
        if quantize_heads(heads, q_bits, q_group_size):
            quantization = {"group_size": q_group_size, "bits": q_bits}
        else:
            checkpoint.notes.append("-q: nothing quantised (the heads share the base lm_head)")

    extra = {"source_format": checkpoint.format, "converted_from": str(source), "dtype": dtype}
    for key in ("base_model_name_or_path",):
        if key in found.config:
            extra[key] = found.config[key]
    outputs = [(output_path, lambda folder: save_heads(folder, heads, extra))]
    if backbone_out is not None:
        from .backbone import backbone_writer

        outputs.append((Path(backbone_out), backbone_writer(path, found, Path(backbone_out),
                                                           dtype)))
        checkpoint.notes.append(f"backbone written to {backbone_out}")
    write_outputs(outputs, force)

    return _report(checkpoint.format, checkpoint, parameters, output_path, dtype,
                   quantization=quantization, notes=checkpoint.notes)


def _report(fmt: str, heads, parameters: int, output: Path, dtype: str, **more) -> ConversionReport:
    """The report of a written folder; ``heads`` is anything with the heads' dimensions
    (a source checkpoint or a heads config)."""
    return ConversionReport(format=fmt, num_heads=heads.num_heads, num_layers=heads.num_layers,
                            hidden_size=heads.hidden_size, vocab_size=heads.vocab_size,
                            shared_lm_head=heads.shared_lm_head, parameters=parameters,
                            output=output, output_bytes=folder_size(output), dtype=dtype, **more)


def _export_vllm(source, output: Path, revision, dtype, force) -> ConversionReport:
    path = resolve(source, revision)
    if not path.is_dir():
        raise ConversionError(f"--to vllm reads a medusa-mlx heads folder; {path} is a file")
    heads = load_mlx_heads(path)
    if is_context(heads):
        raise ConversionError(f"{path} is a context drafter (EAGLE-style: a decoder layer over "
                              "the text); vLLM's Medusa has no equivalent, so it cannot be exported")
    args = heads.args
    if args.sequential:
        raise ConversionError(f"{path}: sequential heads have no vLLM equivalent")
    extra = {k: v for k, v in args.extra.items() if k == "base_model_name_or_path"}
    write_atomically(output, force, lambda folder: write_vllm(folder, heads, dtype, extra))
    return _report("medusa-mlx -> vllm", args, parameter_count(heads), output, dtype)


def summary(report: ConversionReport) -> str:
    projection = ("shared (the base model's lm_head)" if report.shared_lm_head
                  else f"own lm_head per head, vocab {report.vocab_size}")
    weights = report.dtype
    if report.quantization:
        q = report.quantization
        weights += f", lm_heads {q['bits']}-bit (group {q['group_size']})"
    lines = [
        f"format:      {DESCRIPTIONS.get(report.format, report.format)}",
        f"heads:       {report.num_heads} x {report.num_layers} residual layer(s), "
        f"hidden {report.hidden_size}",
        f"projection:  {projection}",
        f"parameters:  {report.parameters:,}",
        f"output:      {report.output} ({_human(report.output_bytes)}, {weights})",
    ]
    lines += [f"note:        {note}" for note in report.notes]
    return "\n".join(lines)


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="convert.py",
        description="Convert Medusa heads (Medusa-1 .pt, Medusa v2 safetensors, Medusa-2 "
        "full models, vLLM Medusa) to MLX heads, or MLX heads back to vLLM. torch is not "
        "needed, and pickled code in .pt files is never run.",
        epilog=EXAMPLES,
        formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="local folder, weights file, or Hugging Face hub id")
    parser.add_argument("-o", "--mlx-path", "--output", dest="output", default="mlx_medusa_heads",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS,
                        help="input format (default: detected from the files)")
    parser.add_argument("--to", choices=("mlx", "vllm"), default="mlx",
                        help="mlx: write medusa-mlx heads; vllm: export a medusa-mlx folder to "
                        "vLLM's Medusa format (default: %(default)s)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float16",
                        help="output dtype (default: %(default)s)")
    parser.add_argument("-q", "--quantize", action="store_true",
                        help="quantise the per-head lm_heads (blocks stay in --dtype)")
    parser.add_argument("--q-bits", type=int, default=4, help="bits per weight (default: 4)")
    parser.add_argument("--q-group-size", type=int, default=64,
                        help="quantisation group size (default: 64)")
    parser.add_argument("--base", help="mlx-lm model folder (or its config.json) the heads "
                        "will run on: checks hidden size and vocab")
    parser.add_argument("--expand-vocab", action="store_true",
                        help="vLLM heads with a truncated vocab: place the rows at their "
                        "token_map ids, zeros elsewhere")
    parser.add_argument("--backbone-out", help="Medusa-2 full models: also convert the "
                        "backbone (without the heads) with mlx_lm.convert into this folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    run_cli(_main, argv)


def _main(argv: Optional[List[str]]) -> int:
    args = configure_parser().parse_args(argv)
    report = convert(
        args.source,
        args.output,
        fmt=args.fmt,
        to=args.to,
        revision=args.revision,
        dtype=args.dtype,
        quantize=args.quantize,
        q_bits=args.q_bits,
        q_group_size=args.q_group_size,
        base=args.base,
        force=args.force,
        expand_vocab=args.expand_vocab,
        backbone_out=args.backbone_out,
    )
    print(summary(report))
    return 0


if __name__ == "__main__":
    main()
