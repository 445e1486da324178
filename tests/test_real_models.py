"""Medusa greedy == plain mlx-lm greedy on real models, offline."""

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

from medusa_mlx import generate, load
from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.model import attach_heads

REPO = Path(__file__).resolve().parents[1]
LILY = "Once upon a time, there was a little girl named Lily"



def plain(backbone, prompt, n):
    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n)]


def medusa(model, prompt, n, tree):
    return [t for s in medusa_generate_step(prompt, model, max_tokens=n, tree=tree) for t in s.tokens]


@pytest.fixture(scope="module")
def stories(shared_dir):
    return load(str(shared_dir / "data" / "stories260K.bin"))


def test_stories260k_plain_greedy_is_the_reference_story(stories):
    model, tokenizer = stories
    text = tokenizer.decode(plain(model.backbone, [tokenizer.bos_token_id], 40))
    assert text.startswith(LILY)


@pytest.mark.parametrize("tree", ["chain-4", "tree-16", "tree-64"])
def test_stories260k_medusa_equals_plain_for_300_tokens(stories, tree):
    model, tokenizer = stories
    prompt = [tokenizer.bos_token_id]
    assert medusa(model, prompt, 300, tree) == plain(model.backbone, prompt, 300)


def test_stories260k_untrained_heads_equal_plain(stories):
    model, tokenizer = stories
    random_heads = attach_heads(model.backbone, num_heads=5, seed=3)
    prompt = tokenizer.encode("Tom had a red kite.")
    assert medusa(random_heads, prompt, 300, "tree-32") == plain(model.backbone, prompt, 300)


def test_stories260k_text_api(stories):
    model, tokenizer = stories
    text = generate(model, tokenizer, [tokenizer.bos_token_id], max_tokens=30, tree="tree-8")
    assert text.startswith(LILY)


@pytest.fixture(scope="module")
def smol():
    return load("smollm2")


def chat(tokenizer, question):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)


@pytest.mark.smollm2
def test_smollm2_knows_the_capital_of_france(smol):
    model, tokenizer = smol
    text = generate(model, tokenizer, chat(tokenizer, "What is the capital of France?"), max_tokens=30)
    assert "Paris" in text


@pytest.mark.smollm2
@pytest.mark.parametrize(
    "question",
    [
        "Write a story about a lighthouse keeper who finds a message in a bottle.",
        "Explain in detail how a bicycle works, part by part.",
        "List twenty ideas for a rainy weekend, with a sentence about each.",
    ],
)
def test_smollm2_medusa_equals_plain_for_200_tokens(smol, question):
    model, tokenizer = smol
    prompt = chat(tokenizer, question)
    assert medusa(model, prompt, 200, "tree-8") == plain(model.backbone, prompt, 200)


@pytest.mark.smollm2
def test_smollm2_branch_drafting_is_exact_and_beats_one_chain_of_guesses(smol):
    """The shipped sequential heads draft tree-64 branch by branch: output equals
    plain greedy, and more tokens are accepted than when every branch is fed one
    chain of best guesses (the heads' top-k per depth, as plain heads draft)."""
    from medusa_mlx.draft import heads_topk

    model, tokenizer = smol
    prompt = chat(tokenizer, "Explain in detail how a bicycle works, part by part.")

    def chain_of_guesses(hidden, history):
        return heads_topk(model, hidden, 3, 10, history[-1])

    def accepted(proposer):
        steps = list(medusa_generate_step(prompt, model, max_tokens=160, tree="tree-64",
                                          proposer=proposer))
        return [t for s in steps for t in s.tokens], sum(s.accepted for s in steps)

    tokens, branch = accepted(None)
    assert tokens == plain(model.backbone, prompt, 160)
    assert branch > accepted(chain_of_guesses)[1]


@pytest.mark.smollm2
def test_smollm2_lookup_alone_and_merged_are_exact_and_accept_copies(smol):
    """Quote a passage (the shipped grounded set's third prompt): prompt lookup
    alone (no heads) and merged with the shipped heads give plain greedy output
    and accept the copied text (replayed: ~10 tokens/step over 128 tokens)."""
    from medusa_mlx.bench.prompts import read_prompts
    from medusa_mlx.model import medusa_model

    model, tokenizer = smol
    prompt = chat(tokenizer, read_prompts("grounded")[2])
    reference = plain(model.backbone, prompt, 96)
    for target in (medusa_model(model.backbone, None), model):
        steps = list(medusa_generate_step(prompt, target, max_tokens=96, tree="tree-8",
                                          lookup=True))
        assert [t for s in steps for t in s.tokens] == reference
        assert 96 / len(steps) > 3


def test_cli_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.bin"
    result = subprocess.run(
        [sys.executable, "-m", "medusa_mlx.generate", "--model", str(missing)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {missing} not found"] or "nope.bin" in result.stderr


def test_cli_overlong_prompt(shared_dir):
    result = subprocess.run(
        [sys.executable, "-m", "medusa_mlx.generate", "--model", str(shared_dir / "data" / "stories260K.bin"),
         "--prompt", "Once upon a time " * 300],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "does not fit the model's context of 512 tokens" in result.stderr


def test_train_cli_end_to_end_on_stories260k(shared_dir, tmp_path):
    """python -m medusa_mlx.train on a real model: extra training-only data, a head
    vocabulary and a measured tree land in a folder that loads and decodes exactly."""
    import json

    from medusa_mlx.training.cli import main as train_main

    docs = (shared_dir / "data" / "tinystories_val.txt").read_text().split("\n\n")[:40]
    (tmp_path / "main.txt").write_text("\n\n".join(docs[:30]))
    (tmp_path / "extra.txt").write_text("\n\n".join(docs[30:]))
    out = tmp_path / "heads"
    with pytest.raises(SystemExit) as done:  # run_cli exits with the command's code
        train_main(["--model", str(shared_dir / "data" / "stories260K.bin"),
                    "--data", str(tmp_path / "main.txt"), "--extra-data", str(tmp_path / "extra.txt"),
                    "--mode", "generate", "--max-new-tokens", "24", "--held-out", "0.2",
                    "--num-heads", "2", "--shared-lm-head", "--sequential-heads",
                    "--steps", "4", "--batch-size", "64", "--checkpoint-every", "4",
                    "--head-vocab", "64", "--loss-vocab", "head", "--dtype", "float16", "--cache-dir", str(tmp_path / "cache"),
                    "--out", str(out)])
    assert done.value.code == 0
    config = json.loads((out / "config.json").read_text())
    assert len(config["head_vocab"]) == 64 and config["tree"]
    assert config["training"]["data"]["extra_files"] == [str(tmp_path / "extra.txt")]
    # 24 main records train (6 held out) and all 10 extra ones: 25 positions each.
    assert config["training"]["train_positions"] == (24 + 10) * 25
    assert len(config["held_out_accuracy"]["top1"]) == 2
    # Sequential heads also report the accuracy branch drafting sees (true earlier
    # tokens); head 0 sees the same token either way.
    forced = config["held_out_accuracy"]["true_tokens"]["top1"]
    assert len(forced) == 2 and forced[0] == config["held_out_accuracy"]["top1"][0]
    # The evaluation CLI: accuracy from the cached held-out features, decoding of held-out prompts.
    from medusa_mlx.training.evaluate import main as evaluate_main

    (held_out,) = (tmp_path / "cache").glob("*/features-held_out.npz")
    with pytest.raises(SystemExit) as done:
        evaluate_main(["--model", str(shared_dir / "data" / "stories260K.bin"), "--heads", str(out),
                       "--features", str(held_out), "--data", str(tmp_path / "main.txt"),
                       "--held-out", "0.2", "--num-prompts", "2", "--max-tokens", "20",
                       "--trees", "auto", "--output", str(tmp_path / "eval.json")])
    assert done.value.code == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["accuracy"]["own guesses"]["top1"] == config["held_out_accuracy"]["top1"]
    assert report["accuracy"]["true tokens"]["top1"] == forced
    assert report["prompts"] == 2 and report["trees"]["auto"]["mean_accepted_length"] >= 1
    # A shipped folder by name, as every other CLI takes it (the stories drafter).
    with pytest.raises(SystemExit) as done:
        evaluate_main(["--model", str(shared_dir / "data" / "stories260K.bin"),
                       "--heads", "stories260K-context", "--data", str(tmp_path / "main.txt"),
                       "--held-out", "0.2", "--num-prompts", "2", "--max-tokens", "20",
                       "--trees", "auto", "--output", str(tmp_path / "eval-ctx.json")])
    assert done.value.code == 0
    assert json.loads((tmp_path / "eval-ctx.json").read_text())["trees"]["auto"][
        "mean_accepted_length"] > 1
    model, tokenizer = load(str(shared_dir / "data" / "stories260K.bin"), medusa=str(out))
    assert model.head_vocab is not None and model.head_vocab.shape == (64,)
    prompt = tokenizer.encode("Tom had a red kite.")
    assert medusa(model, prompt, 60, "auto") == plain(model.backbone, prompt, 60)


def answer_store_of_stories(shared_dir, tmp_path) -> tuple:
    """Stories260K answers as distill writes them: a chunk folder and a single
    file, 27 training ids and 3 held-out ones. -> (model path, rows, train ids)."""
    import gzip
    import json

    from medusa_mlx.training.prompt_sets import AnswerStore, is_held_out

    model_path = str(shared_dir / "data" / "stories260K.bin")
    _, tokenizer = load(model_path, medusa=None)
    stories = (shared_dir / "data" / "tinystories_val.txt").read_text().split("\n\n")[:30]
    ids = [f"magpie-{i}" for i in range(200)]
    held = [i for i in ids if is_held_out(i)][:3]
    train_ids = [i for i in ids if not is_held_out(i)][:27]
    rows = []
    for rid, story in zip(train_ids + held, stories):
        tokens = tokenizer.encode(story)[:40]
        rows.append({"id": rid, "prompt_ids": tokens[:8], "answer_ids": tokens[8:], "finish": "length"})
    AnswerStore(tmp_path / "store").write_chunk("magpie", rows[:20])
    with gzip.open(tmp_path / "more.jsonl.gz", "wt") as f:  # a single file, as ../shared has
        f.writelines(json.dumps(r) + "\n" for r in rows[20:])
    return model_path, rows, train_ids


def test_train_cli_from_answer_stores_on_stories260k(shared_dir, tmp_path):
    """train --answers: answers made elsewhere (distill chunks, the shared head start)
    train without regenerating anything; held-out ids never train and, with no --data,
    are the held-out split the tree is measured on."""
    import json

    from medusa_mlx.training.cli import main as train_main

    model_path, rows, train_ids = answer_store_of_stories(shared_dir, tmp_path)
    out = tmp_path / "heads"
    with pytest.raises(SystemExit) as done:
        train_main(["--model", model_path, "--answers", str(tmp_path / "store"),
                    str(tmp_path / "more.jsonl.gz"), "--num-heads", "2", "--steps", "3",
                    "--batch-size", "32", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert done.value.code == 0
    config = json.loads((out / "config.json").read_text())
    # Each answer gives len(answer) + 1 positions (the last prompt token predicts too).
    expected = sum(len(r["answer_ids"]) + 1 for r in rows if r["id"] in train_ids)
    assert config["training"]["train_positions"] == expected
    assert config["held_out_accuracy"]["positions"] > 0 and config["tree"]
    model, tokenizer = load(model_path, medusa=str(out))
    prompt = tokenizer.encode("Tom had a red kite.")
    assert medusa(model, prompt, 40, "auto") == plain(model.backbone, prompt, 40)
    # Without held-out answers and without --data, a measured tree is refused in one line.
    with pytest.raises(SystemExit) as done:
        train_main(["--model", model_path, "--answers", str(tmp_path / "store"), "--steps", "1",
                    "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "h2")])
    assert done.value.code == 1


def test_train_cli_context_drafter_measures_its_tree(shared_dir, tmp_path):
    """train --kind context --tree measure: the drafter's tree is chosen from its
    held-out ranks and this machine's costs, saved, and decodes exactly; the
    features are the ones the Medusa trainer reads (one cache)."""
    import json

    from medusa_mlx.training.cli import main as train_main

    model_path, rows, train_ids = answer_store_of_stories(shared_dir, tmp_path)
    out = tmp_path / "drafter"
    with pytest.raises(SystemExit) as done:
        train_main(["--kind", "context", "--model", model_path, "--answers",
                    str(tmp_path / "store"), str(tmp_path / "more.jsonl.gz"), "--num-heads", "3",
                    "--steps", "3", "--batch-size", "4", "--window", "32", "--max-tree-nodes", "8",
                    "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert done.value.code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "context"
    choice = config["tree_choice"]
    assert config["tree"] and choice["nodes"] == len(config["tree"]) <= 8
    assert choice["heads_ms"] and config["training"]["train_positions"] == sum(
        len(r["answer_ids"]) for r in rows if r["id"] in train_ids)
    cached = sorted((tmp_path / "cache").glob("sequences-*.npz"))
    # Re-measured later (python -m medusa_mlx.tree_search ... --answers): same features, new costs.
    from medusa_mlx.training.tree_search import main as tree_main

    (out / "config.json").write_text(json.dumps({**config, "tree": [[0]], "tree_choice": {}}))
    with pytest.raises(SystemExit) as done:
        tree_main(["--model", model_path, "--heads", str(out), "--answers", str(tmp_path / "store"),
                   str(tmp_path / "more.jsonl.gz"), "--max-tree-nodes", "8",
                   "--cache-dir", str(tmp_path / "cache")])
    assert done.value.code == 0
    again = json.loads((out / "config.json").read_text())
    assert again["tree_choice"]["nodes"] == len(again["tree"]) and again["kind"] == "context"
    assert sorted((tmp_path / "cache").glob("sequences-*.npz")) == cached
    model, tokenizer = load(model_path, medusa=str(out))
    prompt = tokenizer.encode("Tom had a red kite.")
    assert medusa(model, prompt, 40, "auto") == plain(model.backbone, prompt, 40)
    # The Medusa trainer reads the same parts: no new backbone pass.
    with pytest.raises(SystemExit) as done:
        train_main(["--model", model_path, "--answers", str(tmp_path / "store"),
                    str(tmp_path / "more.jsonl.gz"), "--num-heads", "2", "--steps", "2",
                    "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "heads")])
    assert done.value.code == 0
    assert sorted((tmp_path / "cache").glob("sequences-*.npz")) == cached
    # Medusa heads trained on answers re-measure their tree from the same features too.
    with pytest.raises(SystemExit) as done:
        tree_main(["--model", model_path, "--heads", str(tmp_path / "heads"), "--answers",
                   str(tmp_path / "store"), str(tmp_path / "more.jsonl.gz"),
                   "--max-tree-nodes", "8", "--cache-dir", str(tmp_path / "cache")])
    assert done.value.code == 0
    assert json.loads((tmp_path / "heads" / "config.json").read_text())["tree_choice"]["nodes"] <= 8


def test_train_cli_context_drafter_from_text_records(shared_dir, tmp_path):
    """train --kind context --data: stories the base model continues (as the
    stories260K Medusa heads are trained), split and held out as for heads."""
    import json

    from medusa_mlx.training.cli import main as train_main

    model_path = str(shared_dir / "data" / "stories260K.bin")
    out = tmp_path / "drafter"
    with pytest.raises(SystemExit) as done:
        train_main(["--kind", "context", "--model", model_path,
                    "--data", str(shared_dir / "data" / "tinystories_val.txt"), "--mode", "generate",
                    "--max-records", "24", "--max-new-tokens", "40", "--held-out", "0.25",
                    "--num-heads", "3", "--steps", "3", "--batch-size", "4", "--window", "32",
                    "--max-tree-nodes", "8", "--cache-dir", str(tmp_path / "cache"),
                    "--dtype", "float16", "--out", str(out)])
    assert done.value.code == 0
    config = json.loads((out / "config.json").read_text())
    # Saved as asked, although measuring the tree computed in the backbone's float32.
    from medusa_mlx.safe_files import read_safetensors_header

    header = read_safetensors_header(out / "model.safetensors")
    assert {info.dtype for info in header.values()} == {"F16"}
    assert config["training"]["train_sequences"] == 18 and config["tree_choice"]["nodes"] <= 8
    assert len(config["held_out_top1_per_depth"]) == 3
    model, tokenizer = load(model_path, medusa=str(out))
    prompt = tokenizer.encode("Once upon a time")
    assert medusa(model, prompt, 40, "auto") == plain(model.backbone, prompt, 40)
