"""Loaders: llama2.c .bin and GGUF (SmolLM2 and tiny synthetic files)."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models.llama import Model, ModelArgs

from medusa_mlx.loaders.embedded import EMBEDDED_DEFAULT, smollm2_gguf_path
from medusa_mlx.loaders.gguf import load_gguf
from medusa_mlx.loaders.llama2c import load_llama2c
from required_data import require_file, require_smollm2

REPO = Path(__file__).resolve().parents[1]

# llama2.c's reference greedy output for stories260K from BOS.
LILY = "Once upon a time, there was a little girl named Lily."
LILY_TOKENS = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]


@pytest.fixture(scope="module")
def data_dir(shared_dir) -> Path:
    return require_file(shared_dir / "data" / "stories260K.bin").parent


def greedy(model, prompt_ids, max_tokens, eos_ids=()):
    tokens = []
    argmax = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
    for token, _ in generate_step(mx.array(prompt_ids), model, max_tokens=max_tokens, sampler=argmax):
        token = int(token)
        if token in eos_ids:
            break
        tokens.append(token)
    return tokens


# ---------------------------------------------------------------- llama2.c


@pytest.fixture(scope="module")
def stories(data_dir):
    return load_llama2c(data_dir / "stories260K.bin")


def test_stories260k_greedy_from_bos_tells_about_lily(stories):
    model, tokenizer = stories
    assert model.args.rope_traditional and model.args.tie_word_embeddings
    tokens = greedy(model, [tokenizer.bos_token_id], max_tokens=20)
    assert tokens[: len(LILY_TOKENS)] == LILY_TOKENS
    assert tokenizer.decode(tokens).startswith(LILY)


def test_llama2c_tokenizer_encodes_with_bos_and_round_trips(stories):
    _, tokenizer = stories
    ids = tokenizer.encode(LILY)
    assert ids[0] == 1 and tokenizer.bos_token_id == 1
    assert ids[1:] == LILY_TOKENS
    assert tokenizer.decode(ids, skip_special_tokens=True) == LILY
    assert 2 in tokenizer.eos_token_ids
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    for token in ids[1:]:
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == LILY


def write_llama2c(path: Path, header: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random legacy checkpoint with the given header; returns its arrays."""
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = header
    head_dim, kv_dim, vocab = dim // heads, kv_heads * dim // heads, abs(vocab)
    shapes = {
        "emb": (vocab, dim), "rms_att": (layers, dim), "wq": (layers, dim, dim),
        "wk": (layers, kv_dim, dim), "wv": (layers, kv_dim, dim), "wo": (layers, dim, dim),
        "rms_ffn": (layers, dim), "w1": (layers, hidden, dim), "w2": (layers, dim, hidden),
        "w3": (layers, hidden, dim), "rms_final": (dim,), "freqs": (2, seq_len, head_dim // 2),
    }
    if header[5] < 0:
        shapes["wcls"] = (vocab, dim)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    with open(path, "wb") as f:
        f.write(np.array(header, dtype="<i4").tobytes())
        for array in arrays.values():
            f.write(array.astype("<f4").tobytes())
    return arrays


def test_llama2c_unshared_classifier_loads_into_lm_head(tmp_path, data_dir):
    arrays = write_llama2c(tmp_path / "tiny.bin", [16, 32, 2, 4, 2, -512, 32], np.random.default_rng(0))
    model, _ = load_llama2c(tmp_path / "tiny.bin", data_dir / "tok512.model")
    assert not model.args.tie_word_embeddings
    np.testing.assert_array_equal(np.array(model.lm_head.weight), arrays["wcls"])
    np.testing.assert_array_equal(np.array(model.model.layers[1].self_attn.k_proj.weight), arrays["wk"][1])
    np.testing.assert_array_equal(np.array(model.model.layers[0].mlp.down_proj.weight), arrays["w2"][0])


def test_llama2c_errors_name_the_file(tmp_path, data_dir):
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_llama2c(missing)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(ValueError, match="garbage.bin"):
        load_llama2c(garbage)
    # A real checkpoint with no tokenizer beside it.
    (tmp_path / "stories260K.bin").symlink_to(data_dir / "stories260K.bin")
    with pytest.raises(FileNotFoundError, match="tok512.model"):
        load_llama2c(tmp_path / "stories260K.bin")


# ---------------------------------------------------------------- GGUF, synthetic


TINY_ARGS = dict(
    model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=6,
    max_position_embeddings=64, rope_theta=10000.0, rope_traditional=True,
)
TINY_TOKENS = ["<|endoftext|>", "<|im_end|>", "a", "b", "ab", "Ġ"]
GGUF_BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(mlx_name: str) -> str:
    """mlx-lm parameter name -> GGUF tensor name (the inverse of the loader's map)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if mlx_name in fixed:
        return fixed[mlx_name]
    _, _, layer, rest = mlx_name.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_BLOCK_NAMES[module]}.{suffix}"


def tiny_metadata(architecture="llama") -> dict:
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    return {
        "general.architecture": architecture,
        "llama.embedding_length": u32(32), "llama.block_count": u32(2),
        "llama.feed_forward_length": u32(48), "llama.attention.head_count": u32(4),
        "llama.attention.head_count_kv": u32(2), "llama.context_length": u32(64),
        "llama.rope.freq_base": mx.array(10000.0), "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TINY_TOKENS,
        "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.token_type": mx.array([3, 3, 1, 1, 1, 1], dtype=mx.int32),
        "tokenizer.ggml.eos_token_id": u32(0),
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}",
    }


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_gguf_round_trips_through_mlx_lm_names(tmp_path, tied):
    mx.random.seed(0)
    reference = Model(ModelArgs(**TINY_ARGS, tie_word_embeddings=tied))
    weights = {gguf_name(name): value for name, value in tree_flatten(reference.parameters())}
    mx.save_gguf(str(tmp_path / "tiny.gguf"), weights, tiny_metadata())

    model, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    assert model.args.tie_word_embeddings == tied
    prompt = mx.array([[2, 3, 4, 5, 2]])
    np.testing.assert_allclose(np.array(model(prompt)), np.array(reference(prompt)), rtol=1e-5, atol=1e-5)
    assert tokenizer.encode("ab a", add_special_tokens=False) == [4, 5, 2]
    assert set(tokenizer.eos_token_ids) == {0, 1}


def test_gguf_refuses_other_architectures(tmp_path):
    path = tmp_path / "mamba.gguf"
    mx.save_gguf(str(path), {"x": mx.zeros((4,))}, {"general.architecture": "mamba"})
    with pytest.raises(ValueError, match="architecture 'mamba' is not supported"):
        load_gguf(path)


def test_gguf_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_gguf(missing)


# ---------------------------------------------------------------- GGUF, SmolLM2

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(require_smollm2())


@pytest.mark.smollm2
def test_smollm2_answers_paris(smollm2):
    model, tokenizer = smollm2
    assert EMBEDDED_DEFAULT == "smollm2"
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True)
    answer = tokenizer.decode(greedy(model, prompt, max_tokens=16, eos_ids=tokenizer.eos_token_ids))
    assert "Paris" in answer


@pytest.mark.smollm2
@pytest.mark.parametrize(
    "text", ["The year 2024 had 366 days.", "  two  spaces\n\ttab", "café ñ 日本語 🙂 “quotes”"]
)
def test_smollm2_tokenizer_round_trips(smollm2, text):
    _, tokenizer = smollm2
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text


@pytest.mark.smollm2
def test_smollm2_tokenizer_splits_digits(smollm2):
    _, tokenizer = smollm2
    assert [tokenizer.decode([i]) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]


@pytest.mark.smollm2
def test_smollm2_chat_end_token_is_eos(smollm2):
    _, tokenizer = smollm2
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in tokenizer.eos_token_ids
    assert tokenizer.encode("<|im_start|>user")[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.smollm2
def test_smollm2_quantized_layers_predict_like_dense(smollm2):
    import mlx.nn as nn

    dense, tokenizer = smollm2
    quantized, _ = load_gguf(smollm2_gguf_path(), dtype=None)
    assert isinstance(quantized.model.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(quantized.model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    # A short prompt keeps this fast: quantized matmuls are slow on a CPU.
    prompt = mx.array([tokenizer.encode("The capital of France is")])
    for model in (dense, quantized):
        next_token = mx.argmax(model(prompt)[0, -1]).item()
        assert tokenizer.decode([next_token]) == " Paris"


def test_load_with_heads_accepts_an_architecture_beyond_llama(tmp_path, monkeypatch):
    """``load(folder, medusa=heads)`` on an mlx-lm folder of gpt2 (n_embd, learned
    positions, no ``model.embed_tokens``): sizes come from the model, and the
    loaded model decodes exactly like mlx-lm greedy."""
    import json

    from tokenizers import Tokenizer, models
    from zoo_models import plain_greedy, zoo_config, zoo_model

    from medusa_mlx.generate import medusa_generate_step
    from medusa_mlx.heads import save_heads
    from medusa_mlx.load import load
    from medusa_mlx.model import attach_heads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "gpt2"
    folder.mkdir()
    backbone = zoo_model("gpt2")
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(backbone.parameters())))
    (folder / "config.json").write_text(json.dumps(zoo_config("gpt2")))
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(128)}, unk_token="t0"))
    words.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    save_heads(tmp_path / "heads", attach_heads(backbone, num_heads=3, seed=2).heads)
    model, _ = load(str(folder), medusa=str(tmp_path / "heads"))
    prompt = [1, 5, 9, 17]
    got = [t for s in medusa_generate_step(prompt, model, max_tokens=32, tree="tree-16")
           for t in s.tokens]
    assert type(model.backbone).__module__ == "mlx_lm.models.gpt2"
    assert got == plain_greedy(backbone, prompt, 32)


def test_heads_by_shipped_folder_name(tmp_path, monkeypatch):
    """``--medusa NAME`` finds a folder shipped in the package (heads that are not
    a model's default, e.g. a context drafter); a local folder of that name wins,
    and an unknown bare name is still one NotFoundError."""
    from medusa_mlx.errors import NotFoundError
    from medusa_mlx.load import SHIPPED_HEADS_DIR, resolve_heads_path

    assert resolve_heads_path("stories260K") == SHIPPED_HEADS_DIR / "stories260K"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stories260K").mkdir()
    assert resolve_heads_path("stories260K") == Path("stories260K")
    for name in ("no-such-heads", "../shipped_heads"):
        with pytest.raises(NotFoundError):
            resolve_heads_path(name)
