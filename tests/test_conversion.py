"""Converter tests against genuine torch-written fixtures (read from shared/, never copied
into the repo) plus small checkpoints built here in tmp_path."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from medusa_mlx.conversion.convert import convert
from medusa_mlx.errors import OutputError
from medusa_mlx.heads import load_heads
from medusa_mlx.conversion.tensor_files import ConversionError
from medusa_mlx.conversion.torch_pickle import load_torch_checkpoint
from required_data import require_file

REPO = Path(__file__).resolve().parents[1]
PWNED = Path("/tmp/medusa_fixture_pwned")
FIXTURE_FILES = {
    "medusa1_pt": "medusa_lm_head.pt",
    "medusa1_pt_bf16": "medusa_lm_head.pt",
    "medusa1_pt_legacy": "medusa_lm_head.pt",
    "medusa2_safetensors": "medusa_lm_head.safetensors",
    "vllm_medusa": "model.safetensors",
}


@pytest.fixture(scope="session")
def fixtures(shared_dir) -> Path:
    return require_file(shared_dir / "fixtures" / "medusa")


def mlx_name(name: str) -> str:
    """Fixture tensor name -> medusa-mlx name."""
    rules = [
        (r"^(\d+)\.(\d+)\.linear\.(weight|bias)$", r"heads.\1.blocks.\2.linear.\3"),
        (r"^(\d+)\.\d+\.weight$", r"heads.\1.lm_head.weight"),
        (r"^blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)$", r"heads.\1.blocks.\2.linear.\3"),
        (r"^lm_heads\.(\d+)\.weight$", r"heads.\1.lm_head.weight"),
        (r"^(?:.*\.)?medusa_head\.(\d+)\.(\d+)\.linear\.(weight|bias)$",
         r"heads.\1.blocks.\2.linear.\3"),
        (r"^(?:.*\.)?medusa_head\.(\d+)\.\d+\.weight$", r"heads.\1.lm_head.weight"),
    ]
    for pattern, repl in rules:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    raise AssertionError(name)


def assert_exact(output: Path, expected: dict) -> None:
    got = mx.load(str(output / "model.safetensors"))
    assert sorted(got) == sorted(mlx_name(k) for k in expected)
    for key, value in expected.items():
        array = np.array(got[mlx_name(key)])
        assert array.dtype == np.float32
        assert np.array_equal(array, value), key


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "convert.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)


def assert_clean_failure(result, out: Path) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []
    return lines[0]


# --- exact conversion of every fixture ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURE_FILES))
def test_fixture_converts_exactly(fixtures, tmp_path, name):
    out = tmp_path / "out"
    convert(str(fixtures / name), str(out), dtype="float32")
    expected = dict(np.load(fixtures / name / "expected.npz"))
    assert_exact(out, expected)
    heads = load_heads(out)
    assert heads.args.shared_lm_head == (name == "medusa2_safetensors")


@pytest.mark.parametrize("name", ["medusa1_pt", "medusa1_pt_bf16", "medusa1_pt_legacy"])
def test_torch_reader_matches_expected(fixtures, name):
    loaded = load_torch_checkpoint(fixtures / name / "medusa_lm_head.pt")
    expected = np.load(fixtures / name / "expected.npz")
    assert sorted(loaded) == sorted(expected.files)
    for key in expected.files:
        assert loaded[key].dtype == np.float32 and np.array_equal(loaded[key], expected[key])


def test_medusa1_reproduces_logits_and_counts_heads_from_keys(fixtures, tmp_path):
    assert json.loads((fixtures / "medusa1_pt" / "config.json").read_text())[
        "medusa_num_heads"] == 2
    out = tmp_path / "out"
    report = convert(str(fixtures / "medusa1_pt" / "medusa_lm_head.pt"), str(out),
                     dtype="float32")
    assert report.num_heads == 3 and any("claims" in n for n in report.notes)
    heads = load_heads(out)
    assert heads.num_heads == 3 and heads.args.num_layers == 1
    ref = np.load(fixtures / "medusa1_pt" / "expected_logits.npz")
    logits = np.array(heads(mx.array(ref["x"])))
    for h in range(3):
        np.testing.assert_allclose(logits[h], ref[f"head{h}"], atol=1e-5, rtol=0)


def test_default_float16_output(fixtures, tmp_path):
    convert(str(fixtures / "medusa1_pt"), str(tmp_path / "out"))
    assert all(v.dtype == mx.float16 for v in mx.load(str(tmp_path / "out/model.safetensors")).values())


# --- failures: one clear line, nothing left behind --------------------------------------------

def test_malicious_pickle_is_refused_and_never_run(fixtures, tmp_path):
    PWNED.unlink(missing_ok=True)
    out = tmp_path / "out"
    result = run_cli(fixtures / "malicious_pt", "-o", out)
    line = assert_clean_failure(result, out)
    assert "posix.system" in line
    assert not PWNED.exists()


def _non_medusa_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {"model.embed_tokens.weight": mx.zeros((8, 4))})
    return path


def _base_with_hidden_128(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"hidden_size": 128, "vocab_size": 512}))
    return base


@pytest.mark.parametrize("case", ["truncated", "missing", "non_medusa", "base_mismatch"])
def test_user_errors_are_one_line(fixtures, tmp_path, case):
    out = tmp_path / "out"
    if case == "truncated":
        args, words = [fixtures / "truncated_pt"], "truncated or not a torch checkpoint"
    elif case == "missing":
        args, words = [tmp_path / "nope" / "medusa_lm_head.pt"], "no such file"
    elif case == "non_medusa":
        args, words = [_non_medusa_safetensors(tmp_path)], "no Medusa head tensors"
    else:
        args = [fixtures / "medusa1_pt", "--base", _base_with_hidden_128(tmp_path)]
        words = "hidden size 64 != base hidden_size 128"
    line = assert_clean_failure(run_cli(*args, "-o", out), out)
    assert words in line


def test_existing_output_needs_force_and_force_replaces_only_heads(fixtures, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        convert(str(fixtures / "medusa1_pt"), str(out))
    with pytest.raises(OutputError, match="not a heads or model folder"):
        convert(str(fixtures / "medusa1_pt"), str(out), force=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    convert(str(fixtures / "medusa1_pt_bf16"), str(out), force=True)  # empty folder
    convert(str(fixtures / "medusa1_pt"), str(out), force=True)  # a heads folder
    assert load_heads(out).args.num_heads == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_base_dimensions_come_from_the_model_not_config_keys(fixtures, tmp_path):
    """gpt2 names its width n_embd and phi3-style wrappers nest it: the sizes are
    read from the model mlx-lm builds (lazily, no weights), so a mismatch is caught."""
    base = tmp_path / "gpt2"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 128, "n_layer": 1, "n_head": 4, "vocab_size": 512,
        "n_positions": 64, "n_ctx": 64, "layer_norm_epsilon": 1e-5}))
    with pytest.raises(ConversionError, match="hidden size 64 != base hidden_size 128"):
        convert(str(fixtures / "medusa1_pt"), str(tmp_path / "out"), base=str(base))


def test_base_fills_vocab_of_shared_heads(fixtures, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"hidden_size": 64, "vocab_size": 512}))
    convert(str(fixtures / "medusa2_safetensors"), str(tmp_path / "out"), base=str(base))
    assert load_heads(tmp_path / "out").args.vocab_size == 512


# --- round trip, hub, Medusa-2 full models, quantisation, vLLM vocab ---------------------------

def test_round_trip_mlx_vllm_mlx_is_exact(fixtures, tmp_path):
    convert(str(fixtures / "medusa1_pt_bf16"), str(tmp_path / "mlx"), dtype="float32")
    result = run_cli(tmp_path / "mlx", "-o", tmp_path / "vllm", "--to", "vllm",
                     "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "vllm" / "config.json").read_text())
    assert config["model_type"] == "medusa" and config["num_heads"] == 2
    assert config["num_hidden_layers"] == 2 and config["medusa_fc_bias"] is True
    assert config["truncated_vocab_size"] == config["vocab_size"] == 512
    convert(str(tmp_path / "vllm"), str(tmp_path / "back"), dtype="float32")
    first = mx.load(str(tmp_path / "mlx" / "model.safetensors"))
    back = mx.load(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(first) == sorted(back)
    for key in first:
        assert mx.array_equal(first[key], back[key]).item(), key


def test_hub_id_resolves_through_offline_cache(fixtures, tmp_path):
    cache = tmp_path / "hub"
    repo = cache / "models--org--medusa-tiny"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("medusa_lm_head.pt", "config.json"):
        shutil.copy(fixtures / "medusa1_pt" / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    result = run_cli("org/medusa-tiny", "-o", out, "--dtype", "float32", env=env)
    assert result.returncode == 0, result.stderr
    assert_exact(out, dict(np.load(fixtures / "medusa1_pt" / "expected.npz")))


def test_medusa2_full_model_heads_are_extracted(tmp_path):
    rng = np.random.default_rng(0)
    hidden, vocab = 32, 96

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    backbone = {"model.embed_tokens.weight": rand(vocab, hidden),
                "model.layers.0.self_attn.q_proj.weight": rand(hidden, hidden),
                "model.norm.weight": rand(hidden), "lm_head.weight": rand(vocab, hidden)}
    heads = {}
    for h in range(2):
        for l in range(2):
            heads[f"medusa_head.{h}.{l}.linear.weight"] = rand(hidden, hidden)
            heads[f"medusa_head.{h}.{l}.linear.bias"] = rand(hidden)
        heads[f"medusa_head.{h}.2.weight"] = rand(vocab, hidden)
    model = tmp_path / "model"
    model.mkdir()
    shards = {"model-00001-of-00002.safetensors": backbone,
              "model-00002-of-00002.safetensors": heads}
    weight_map = {}
    for shard, tensors in shards.items():
        mx.save_safetensors(str(model / shard), {k: mx.array(v) for k, v in tensors.items()})
        weight_map.update({k: shard for k in tensors})
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (model / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": hidden, "vocab_size": vocab,
         "medusa_num_heads": 2, "medusa_num_layers": 2}))
    report = convert(str(model), str(tmp_path / "out"), dtype="float32")
    assert report.format == "medusa2-full" and report.num_heads == 2 and report.num_layers == 2
    assert_exact(tmp_path / "out", heads)


def test_quantised_output_loads(fixtures, tmp_path):
    out = tmp_path / "out"
    result = run_cli(fixtures / "medusa1_pt", "-o", out, "-q", "--q-bits", "8",
                     "--q-group-size", "32")
    assert result.returncode == 0, result.stderr
    heads = load_heads(out)
    assert json.loads((out / "config.json").read_text())["quantization"] == {
        "group_size": 32, "bits": 8}
    assert isinstance(heads.heads[0].lm_head, nn.QuantizedLinear)
    assert isinstance(heads.heads[0].blocks[0].linear, nn.Linear)
    ref = np.load(fixtures / "medusa1_pt" / "expected_logits.npz")
    logits = np.array(heads(mx.array(ref["x"])).astype(mx.float32))
    np.testing.assert_allclose(logits[0], ref["head0"], atol=0.1)


def _vllm_truncated(tmp_path, with_token_map=True):
    hidden, rows, vocab = 16, 4, 10
    rng = np.random.default_rng(1)
    tensors = {"blocks.0.layers.0.weight": rng.standard_normal((hidden, hidden)),
               "blocks.0.layers.0.bias": rng.standard_normal(hidden),
               "lm_heads.0.weight": rng.standard_normal((rows, hidden))}
    tensors = {k: mx.array(v.astype(np.float32)) for k, v in tensors.items()}
    if with_token_map:
        tensors["token_map"] = mx.array(np.array([7, 0, 3, 9], dtype=np.int64))
    folder = tmp_path / "vllm"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), tensors)
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "medusa", "num_heads": 1, "num_hidden_layers": 1, "hidden_size": hidden,
         "vocab_size": vocab, "truncated_vocab_size": rows}))
    return folder, np.array(tensors["lm_heads.0.weight"])


def test_vllm_truncated_vocab_is_refused_or_expanded(tmp_path):
    folder, rows = _vllm_truncated(tmp_path)
    with pytest.raises(ConversionError, match="--expand-vocab"):
        convert(str(folder), str(tmp_path / "out"), dtype="float32")
    convert(str(folder), str(tmp_path / "out"), dtype="float32", expand_vocab=True)
    weight = np.array(load_heads(tmp_path / "out").heads[0].lm_head.weight)
    assert weight.shape == (10, 16)
    assert np.array_equal(weight[[7, 0, 3, 9]], rows)
    assert not weight[[1, 2, 4, 5, 6, 8]].any()


def test_backbone_out_converts_the_backbone_with_mlx_lm(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from mlx_lm import load

    hidden, vocab, inner = 32, 96, 64
    model = tmp_path / "model"
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(
        str(model))
    rng = np.random.default_rng(0)

    def rand(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32))

    weights = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": rand(hidden),
               "lm_head.weight": rand(vocab, hidden),
               "model.layers.0.input_layernorm.weight": rand(hidden),
               "model.layers.0.post_attention_layernorm.weight": rand(hidden)}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        weights[f"model.layers.0.self_attn.{name}.weight"] = rand(hidden, hidden)
    for name, shape in (("gate_proj", (inner, hidden)), ("up_proj", (inner, hidden)),
                        ("down_proj", (hidden, inner))):
        weights[f"model.layers.0.mlp.{name}.weight"] = rand(*shape)
    weights["medusa_head.0.0.linear.weight"] = rand(hidden, hidden)
    weights["medusa_head.0.0.linear.bias"] = rand(hidden)
    weights["medusa_head.0.1.weight"] = rand(vocab, hidden)
    mx.save_safetensors(str(model / "model.safetensors"), weights, metadata={"format": "pt"})
    (model / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": 1,
         "intermediate_size": inner, "num_attention_heads": 4, "num_key_value_heads": 4,
         "rms_norm_eps": 1e-5, "vocab_size": vocab, "tie_word_embeddings": False}))
    convert(str(model), str(tmp_path / "heads"), dtype="float32",
            backbone_out=str(tmp_path / "backbone"))
    backbone, _ = load(str(tmp_path / "backbone"))
    assert backbone(mx.array([[1, 2, 3]])).shape == (1, 3, vocab)
    assert load_heads(tmp_path / "heads").num_heads == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "heads", "model"]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickle_payload_is_refused(tmp_path, protocol):
    import pickle

    PWNED.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"0.0.linear.weight": _Payload()}, protocol=protocol))
    with pytest.raises(ValueError, match=r"refusing to load (posix|os)\.system"):
        load_torch_checkpoint(path)
    assert not PWNED.exists()


# --- converted heads in the engine ------------------------------------------------------------

@pytest.mark.parametrize("name", ["medusa1_pt", "medusa1_pt_bf16", "medusa2_safetensors", "vllm_medusa"])
def test_converted_heads_decode_stories260k_like_plain_greedy(fixtures, shared_dir, tmp_path, name):
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from medusa_mlx import load, medusa_generate_step

    out = tmp_path / "heads"
    convert(str(fixtures / name), str(out), dtype="float32", base=None)
    model, tokenizer = load(str(shared_dir / "data" / "stories260K.bin"), medusa=str(out))
    assert model.num_heads == load_heads(out).num_heads
    prompt = tokenizer.encode("Once upon a time")
    plain = [t for t, _ in generate_step(mx.array(prompt), model.backbone, max_tokens=120)]
    steps = medusa_generate_step(prompt, model, max_tokens=120, tree="tree-16")
    assert [t for s in steps for t in s.tokens] == plain
