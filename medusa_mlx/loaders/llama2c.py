"""Import a llama2.c legacy `.bin` checkpoint as an unmodified mlx-lm llama model.

Layout (llama2.c `run.c`, "legacy" export version 0): a header of 7 int32
(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then
float32 arrays in this order: token embedding, attention RMSNorm weights,
wq, wk, wv, wo, FFN RMSNorm weights, w1, w2, w3, final RMSNorm weight, the
RoPE frequency tables (unused), and the classifier when it is not shared.
A negative vocab_size means the classifier is stored separately.

Every matrix is stored as [out_features, in_features], which is already the
layout of `mlx.nn.Linear.weight`. llama2.c rotates adjacent pairs of q/k
features (interleaved RoPE), which is MLX's `traditional=True` RoPE, so the
weights load as they are.
"""

from dataclasses import dataclass
from math import prod
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer, TokenizerWrapper

from ..errors import CheckpointError
from ..safe_files import regular_file

HEADER_INTS = 7
HEADER_BYTES = HEADER_INTS * 4
LLAMA2C_ROPE_THETA = 10000.0
LLAMA2C_RMS_NORM_EPS = 1e-5


@dataclass
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


def read_header(path: Path) -> Llama2cHeader:
    """The header, checked for consistency and against the file size before anything
    is built from it (a header claiming 10^6 layers used to build the model first)."""
    raw = np.fromfile(regular_file(path, "llama2.c checkpoint"), dtype="<i4", count=HEADER_INTS)
    if raw.size != HEADER_INTS:
        raise CheckpointError(f"{path}: too short for a llama2.c checkpoint header")
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = (int(v) for v in raw)
    header = Llama2cHeader(
        dim=dim,
        hidden_dim=hidden_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=abs(vocab_size),
        seq_len=seq_len,
        shared_classifier=vocab_size > 0,
    )
    plausible = (
        min(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len) > 0
        and dim % n_heads == 0
        and n_heads % n_kv_heads == 0
        and (dim // max(n_heads, 1)) % 2 == 0  # RoPE rotates pairs of features
    )
    if not plausible:
        raise CheckpointError(f"{path}: not a llama2.c legacy checkpoint (header {raw.tolist()})")
    expected = expected_size(header)
    actual = path.stat().st_size
    if actual != expected:
        raise CheckpointError(
            f"{path}: size {actual} bytes does not match its header (expected {expected}); "
            "not a legacy llama2.c checkpoint?"
        )
    return header


def expected_size(header: Llama2cHeader) -> int:
    """File size the header implies (Python ints: no overflow for any header)."""
    return HEADER_BYTES + 4 * sum(prod(shape) for _, shape in _tensor_shapes(header))


def _tensor_shapes(h: Llama2cHeader) -> list[tuple[str, tuple[int, ...]]]:
    """The float32 arrays after the header, in file order."""
    L = h.n_layers
    shapes = [
        ("token_embedding", (h.vocab_size, h.dim)),
        ("rms_att", (L, h.dim)),
        ("wq", (L, h.dim, h.dim)),
        ("wk", (L, h.kv_dim, h.dim)),
        ("wv", (L, h.kv_dim, h.dim)),
        ("wo", (L, h.dim, h.dim)),
        ("rms_ffn", (L, h.dim)),
        ("w1", (L, h.hidden_dim, h.dim)),
        ("w2", (L, h.dim, h.hidden_dim)),
        ("w3", (L, h.hidden_dim, h.dim)),
        ("rms_final", (h.dim,)),
        ("freq_cis_real", (h.seq_len, h.head_dim // 2)),
        ("freq_cis_imag", (h.seq_len, h.head_dim // 2)),
    ]
    if not h.shared_classifier:
        shapes.append(("wcls", (h.vocab_size, h.dim)))
    return shapes


def read_tensors(path: Path, header: Llama2cHeader) -> dict[str, np.ndarray]:
    shapes = _tensor_shapes(header)
    if path.stat().st_size != expected_size(header):
        raise CheckpointError(f"{path}: size does not match its header")
    flat = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    tensors = {}
    start = 0
    for name, shape in shapes:
        size = prod(shape)
        tensors[name] = flat[start : start + size].reshape(shape)
        start += size
    return tensors


def model_args(header: Llama2cHeader) -> ModelArgs:
    return ModelArgs(
        model_type="llama",
        hidden_size=header.dim,
        num_hidden_layers=header.n_layers,
        intermediate_size=header.hidden_dim,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        rms_norm_eps=LLAMA2C_RMS_NORM_EPS,
        vocab_size=header.vocab_size,
        max_position_embeddings=header.seq_len,
        rope_theta=LLAMA2C_ROPE_THETA,
        rope_traditional=True,
        tie_word_embeddings=header.shared_classifier,
    )


def mlx_lm_weights(tensors: dict[str, np.ndarray], header: Llama2cHeader) -> list[tuple[str, mx.array]]:
    """llama2.c arrays -> (mlx-lm parameter name, array) pairs."""
    weights = [
        ("model.embed_tokens.weight", tensors["token_embedding"]),
        ("model.norm.weight", tensors["rms_final"]),
    ]
    per_layer = {
        "input_layernorm.weight": "rms_att",
        "self_attn.q_proj.weight": "wq",
        "self_attn.k_proj.weight": "wk",
        "self_attn.v_proj.weight": "wv",
        "self_attn.o_proj.weight": "wo",
        "post_attention_layernorm.weight": "rms_ffn",
        "mlp.gate_proj.weight": "w1",
        "mlp.down_proj.weight": "w2",
        "mlp.up_proj.weight": "w3",
    }
    for layer in range(header.n_layers):
        for mlx_name, l2c_name in per_layer.items():
            weights.append((f"model.layers.{layer}.{mlx_name}", tensors[l2c_name][layer]))
    if not header.shared_classifier:
        weights.append(("lm_head.weight", tensors["wcls"]))
    # Copy out of the big file buffer so each parameter owns its memory.
    return [(name, mx.array(np.ascontiguousarray(array))) for name, array in weights]


def load_llama2c_tokenizer(tokenizer_path: Path) -> TokenizerWrapper:
    """A SentencePiece `.model` as an mlx-lm TokenizerWrapper (BOS 1, EOS 2).

    transformers 5 builds its Llama tokenizer on the `tokenizers` library; we
    extract vocab and merges from the SentencePiece proto (no torch needed).
    """
    # Imported here: transformers is slow to import and only tokenizers need it.
    from tokenizers.models import BPE
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    if tokenizer_path.suffix != ".model":
        raise ValueError(
            f"{tokenizer_path}: expected a SentencePiece .model tokenizer "
            "(llama2.c's own tokenizer .bin format is not supported)"
        )
    extracted = SentencePieceExtractor(str(tokenizer_path)).extract(BPE)
    hf_tokenizer = LlamaTokenizer(
        vocab=extracted["vocab"],
        merges=extracted["merges"],
        add_bos_token=True,
        add_eos_token=False,
    )
    return TokenizerWrapper(
        hf_tokenizer,
        SPMStreamingDetokenizer,
        eos_token_ids=[hf_tokenizer.eos_token_id],
    )


def default_tokenizer_path(model_path: Path, vocab_size: int) -> Path:
    """`tok{vocab}.model` next to the checkpoint (llama2.c's naming), else `tokenizer.model`."""
    candidates = [model_path.with_name(f"tok{vocab_size}.model"), model_path.with_name("tokenizer.model")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no tokenizer next to {model_path}: looked for {', '.join(c.name for c in candidates)}"
    )


def load_llama2c(model_path, tokenizer_path=None) -> tuple[Model, TokenizerWrapper]:
    """Load a llama2.c legacy `.bin` checkpoint and its SentencePiece tokenizer.

    Returns an unmodified `mlx_lm.models.llama.Model` in float32 and an mlx-lm
    `TokenizerWrapper` whose `encode` prepends BOS.
    """
    model_path = Path(model_path)
    header = read_header(model_path)
    if tokenizer_path is None:
        tokenizer_path = default_tokenizer_path(model_path, header.vocab_size)
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {tokenizer_path}")

    tokenizer = load_llama2c_tokenizer(tokenizer_path)
    if len(tokenizer._tokenizer) > header.vocab_size:
        # Token ids past the embedding would be read out of bounds by MLX.
        raise CheckpointError(f"{tokenizer_path} has {len(tokenizer._tokenizer)} tokens, the "
                              f"model {model_path} only {header.vocab_size}")
    model = Model(model_args(header))
    weights = mlx_lm_weights(read_tensors(model_path, header), header)
    model.load_weights(weights, strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model, tokenizer
