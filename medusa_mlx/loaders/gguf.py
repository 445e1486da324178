"""Load llama-architecture GGUF files as unmodified mlx-lm llama models.

`mx.load(path, return_metadata=True)` reads GGUF natively. Q4_0, Q4_1 and Q8_0
tensors come back already converted to MLX affine quantization: a packed
uint32 `weight` plus `scales` and `biases`; other tensors come back dense.

Two facts shape this loader:
- GGUF (llama.cpp's convert script) permutes q/k rows into the interleaved
  RoPE layout. We keep them and build the model with `rope_traditional=True`,
  which computes the same attention as the Hugging Face original.
- On a Linux CPU only dense float32 matmuls use BLAS, so by default we
  dequantize everything to float32. `dtype=None` keeps the quantized layers
  (`nn.QuantizedLinear` / `nn.QuantizedEmbedding`), which is smaller and is
  what Apple GPUs prefer.
"""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import CheckpointError
from .gguf_header import GGUFHeader, read_gguf_header
from .gguf_tokenizer import load_gguf_tokenizer
from ..safe_files import MAX_HIDDEN, MAX_VOCAB

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor base names -> mlx-lm llama module paths.
GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# `weight`/`bias` are the layer's own parameters; `scales`/`biases` come from
# MLX's conversion of GGUF quantized blocks.
PARAMETER_SUFFIXES = ("weight", "bias", "scales", "biases")


@dataclass
class QuantizedTensor:
    weight: mx.array
    scales: mx.array
    biases: mx.array
    group_size: int
    bits: int

    def dequantize(self, dtype: mx.Dtype) -> mx.array:
        # float32 scales/biases make mx.dequantize compute and return float32:
        # exact (the float16 path rounds the result) and faster on CPU.
        dense = mx.dequantize(
            self.weight,
            self.scales.astype(mx.float32),
            self.biases.astype(mx.float32),
            group_size=self.group_size,
            bits=self.bits,
        )
        return dense.astype(dtype)


def _scalar(metadata: dict, key: str, default=None):
    value = metadata.get(key, default)
    if isinstance(value, mx.array):
        if value.size != 1:
            raise ValueError(f"GGUF metadata {key} has {value.size} values; per-layer values are not supported")
        return value.item()
    return value


def mlx_lm_path(gguf_base: str) -> str:
    """`blk.3.attn_q` -> `model.layers.3.self_attn.q_proj`."""
    if gguf_base in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_base]
    parts = gguf_base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}"
    if gguf_base == "rope_freqs":
        raise ValueError("GGUF has rope_freqs (Llama 3 style RoPE scaling), which is not supported")
    raise ValueError(f"unexpected tensor {gguf_base!r} in a llama GGUF")


def model_args(metadata: dict, tensors: dict[str, mx.array]) -> ModelArgs:
    arch = metadata.get("general.architecture")
    hidden_size = int(_scalar(metadata, f"{arch}.embedding_length"))
    num_heads = int(_scalar(metadata, f"{arch}.attention.head_count"))
    head_dim = int(_scalar(metadata, f"{arch}.attention.key_length", hidden_size // num_heads))
    rope_dims = int(_scalar(metadata, f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")

    scaling_type = _scalar(metadata, f"{arch}.rope.scaling.type", "none")
    rope_scaling = None
    if scaling_type == "linear":
        rope_scaling = {"type": "linear", "factor": float(_scalar(metadata, f"{arch}.rope.scaling.factor"))}
    elif scaling_type != "none":
        raise ValueError(f"GGUF rope scaling {scaling_type!r} is not supported")

    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = _scalar(metadata, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab_size is None:
        vocab_size = tensors["token_embd.weight"].shape[0]

    return ModelArgs(
        model_type="llama",
        hidden_size=hidden_size,
        num_hidden_layers=int(_scalar(metadata, f"{arch}.block_count")),
        intermediate_size=int(_scalar(metadata, f"{arch}.feed_forward_length")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(_scalar(metadata, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_scalar(metadata, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        vocab_size=int(vocab_size),
        max_position_embeddings=int(_scalar(metadata, f"{arch}.context_length", 4096)),
        rope_theta=float(_scalar(metadata, f"{arch}.rope.freq_base", 10000.0)),
        rope_traditional=True,  # q/k rows are stored in the interleaved RoPE layout
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
    )


def split_parameters(
    tensors: dict[str, mx.array], dense_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, mx.array], dict[str, QuantizedTensor]]:
    """Rename GGUF tensors to mlx-lm parameters; group quantized triples.

    `dense_shapes` are the float shapes of the model's parameters; the input
    width of each weight tells us the bit width and group size.
    """
    by_base: dict[str, dict[str, mx.array]] = {}
    for name, array in tensors.items():
        base, _, suffix = name.rpartition(".")
        if suffix not in PARAMETER_SUFFIXES:
            raise ValueError(f"unexpected tensor {name!r} in a llama GGUF")
        by_base.setdefault(base, {})[suffix] = array

    dense: dict[str, mx.array] = {}
    quantized: dict[str, QuantizedTensor] = {}
    for base, parts in by_base.items():
        path = mlx_lm_path(base)
        if "bias" in parts:
            dense[f"{path}.bias"] = parts["bias"]
        if "scales" not in parts:
            dense[f"{path}.weight"] = parts["weight"]
            continue
        if "biases" not in parts:
            raise ValueError(f"quantized tensor {base!r} has scales but no biases")
        in_features = dense_shapes[f"{path}.weight"][-1]
        weight, scales = parts["weight"], parts["scales"]
        quantized[path] = QuantizedTensor(
            weight=weight,
            scales=scales,
            biases=parts["biases"],
            group_size=in_features // scales.shape[-1],
            bits=32 * weight.shape[-1] // in_features,  # 32 bits per packed uint32
        )
    return dense, quantized


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict]:
    """Tensors and metadata of a GGUF file; refuses non-llama architectures. The header
    is parsed and checked in Python first (MLX's reader trusts it)."""
    header = read_gguf_header(path)
    arch = header.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{path.name}: GGUF architecture {arch!r:.40} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    check_llama_header(header, path)
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    return tensors, metadata


def check_llama_header(header: GGUFHeader, path: Path) -> None:
    """The llama hyper-parameters agree with the tensors (the model is built from the
    former, so 10^7 blocks or 0 heads must be refused before it is)."""
    md, tensors = header.metadata, header.tensors

    def number(key, default=None, low=1, high=1 << 24):
        value = md.get(f"llama.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CheckpointError(f"{path.name}: GGUF llama.{key} is {value!r:.40}, expected "
                                  f"an integer from {low} to {high}")
        return value

    embedding = tensors.get("token_embd.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise CheckpointError(f"{path.name}: GGUF has no 2-d token_embd.weight")
    vocab, hidden = embedding.shape
    if number("embedding_length", high=MAX_HIDDEN) != hidden or vocab > MAX_VOCAB:
        raise CheckpointError(f"{path.name}: GGUF embedding_length disagrees with "
                              f"token_embd.weight {list(embedding.shape)}")
    blocks = {int(n.split(".")[1]) for n in tensors if n.startswith("blk.")
              and n.split(".")[1].isdigit()}
    if blocks != set(range(number("block_count", high=4096))):
        raise CheckpointError(f"{path.name}: GGUF block_count disagrees with the "
                              f"{len(blocks)} blocks of tensors")
    heads = number("attention.head_count", high=hidden)
    kv_heads = number("attention.head_count_kv", heads, high=heads)
    head_dim = number("attention.key_length", hidden // heads, high=hidden)
    if hidden % heads or heads % kv_heads or head_dim % 2:
        raise CheckpointError(f"{path.name}: GGUF head counts do not divide the hidden size")
    number("feed_forward_length", high=1 << 20)
    number("context_length", 4096)
    if md.get("llama.vocab_size", vocab) != vocab:
        raise CheckpointError(f"{path.name}: GGUF vocab_size disagrees with token_embd.weight")
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not 0 < len(tokens) <= vocab:
        # Token ids past the embedding would be read out of bounds by MLX.
        raise CheckpointError(f"{path.name}: GGUF tokenizer.ggml.tokens is missing or longer "
                              f"than the {vocab}-token embedding")


def load_gguf(path, dtype=mx.float32) -> tuple[Model, TokenizerWrapper]:
    """Load a llama GGUF as an mlx-lm llama model and its tokenizer.

    dtype: the dense dtype for all weights (float32 default: the only fast
    one on a Linux CPU). `None` keeps quantized tensors quantized (as
    QuantizedLinear/QuantizedEmbedding) and others as stored.
    """
    path = Path(path)
    tensors, metadata = read_gguf(path)
    model = Model(model_args(metadata, tensors))
    dense_shapes = {name: p.shape for name, p in tree_flatten(model.parameters())}
    dense, quantized = split_parameters(tensors, dense_shapes)

    if dtype is None:
        layer_config = {p: {"group_size": q.group_size, "bits": q.bits} for p, q in quantized.items()}
        nn.quantize(model, class_predicate=lambda p, _module: layer_config.get(p, False))
        weights = dict(dense)
        for module_path, q in quantized.items():
            weights[f"{module_path}.weight"] = q.weight
            weights[f"{module_path}.scales"] = q.scales
            weights[f"{module_path}.biases"] = q.biases
    else:
        weights = {name: array.astype(dtype) for name, array in dense.items()}
        for module_path, q in quantized.items():
            weights[f"{module_path}.weight"] = q.dequantize(dtype)

    weights = model.sanitize(weights)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model, load_gguf_tokenizer(metadata)
