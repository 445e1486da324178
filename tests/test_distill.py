"""Self-distillation data (training/distill.py): the fixed held-out split, the
chunked answer store, the prompt filters, and a real run on SmolLM2."""

import gzip
import json

import pytest

from medusa_mlx.training.distill import acceptable_prompt, distill
from medusa_mlx.training.prompt_sets import (
    AnswerStore, Prompt, held_out_prompts, is_held_out, read_prompt_file, training_rows,
)


def test_held_out_split_is_fixed_by_id_and_sized_per_source():
    ids = [f"oasst-{i}" for i in range(4000)]
    held = [i for i in ids if is_held_out(i)]
    assert 0.08 < len(held) / len(ids) < 0.12  # 10% for OASST
    assert held == [i for i in ids if is_held_out(i)]  # no state, no randomness
    assert all(is_held_out(f"gsm8k_test-{i}") for i in range(50))  # all of GSM8K test
    share = sum(is_held_out(f"humaneval-{i}") for i in range(4000)) / 4000
    assert 0.22 < share < 0.28


def test_held_out_prompts_groups_by_source(shared_dir):
    prompts = []
    for name in ("oasst", "humaneval", "gsm8k_test"):
        prompts += read_prompt_file(shared_dir / "data" / "prompts" / f"{name}.jsonl")
    groups = held_out_prompts(prompts, per_source=5)
    assert set(groups) == {"oasst", "humaneval", "gsm8k_test"}
    assert all(len(g) == 5 and all(is_held_out(p.id) for p in g) for g in groups.values())
    assert held_out_prompts(prompts, per_source=5) == groups  # same order every time


def test_store_resumes_from_chunks_and_head_start(tmp_path):
    head = tmp_path / "head.jsonl.gz"
    with gzip.open(head, "wt") as f:
        f.write(json.dumps({"id": "oasst-1", "prompt_ids": [1, 2], "answer_ids": [3, 0],
                            "finish": "stop"}) + "\n")
    store = AnswerStore(tmp_path / "out", (head, tmp_path / "missing.jsonl.gz"))
    assert store.done == {"oasst-1"}
    rows = [{"id": "magpie-0", "prompt_ids": [5], "answer_ids": [6, 7], "finish": "length"}]
    path = store.write_chunk("magpie", rows)
    assert path.name == "magpie.0000.jsonl.gz" and not list((tmp_path / "out").glob("*.tmp"))
    again = AnswerStore(tmp_path / "out", (head,))
    assert again.done == {"oasst-1", "magpie-0"}
    assert store.write_chunk("magpie", rows).name == "magpie.0001.jsonl.gz"
    # The same rows give the same bytes (gzip without a timestamp): clean git diffs.
    assert path.read_bytes() == (tmp_path / "out" / "magpie.0001.jsonl.gz").read_bytes()


def test_training_rows_skip_held_out_and_duplicates():
    held = next(f"oasst-{i}" for i in range(100) if is_held_out(f"oasst-{i}"))
    train = next(f"oasst-{i}" for i in range(100) if not is_held_out(f"oasst-{i}"))
    rows = [{"id": held, "prompt_ids": [1, 2], "answer_ids": [3]},
            {"id": train, "prompt_ids": [1, 2, 3], "answer_ids": [4, 5, 6]},
            {"id": train, "prompt_ids": [9], "answer_ids": [9]},
            {"id": "gsm8k_train-7x", "prompt_ids": [1], "answer_ids": []}]
    assert list(training_rows(rows, max_seq_len=5)) == [([1, 2, 3, 4, 5], 2)]


@pytest.mark.parametrize("text, ok", [
    ("How do I bake bread at home without yeast?", True),
    ("Hi", False),                                                # too short
    ("Explain " + "the cat sat " * 5, False),                     # degenerate repetition
    ("Что такое фотосинтез и как он работает в растениях?", False),  # not English
    ("Tell me <|im_start|> about the weather today please", False),  # template token
])
def test_prompt_filter(text, ok):
    assert acceptable_prompt(text) is ok


@pytest.mark.smollm2
def test_distill_writes_magpie_followups_and_resumes(tmp_path):
    from medusa_mlx.load import load_backbone

    model, tokenizer, _ = load_backbone("smollm2")
    store = AnswerStore(tmp_path / "answers")
    logged = []
    written = distill(model, tokenizer, store, [], chunk_size=4, max_new_tokens=8, batch_size=4,
                      minutes=10, log=logged.append, max_chunks=1, cycle=("magpie",),
                      chunks_per_round=1)
    assert written == 1
    rows = list(AnswerStore(tmp_path / "answers").rows())
    magpie = [r for r in rows if r["id"].startswith("magpie-")]
    assert magpie and all(acceptable_prompt(r["messages"][0]["content"]) for r in magpie)
    for r in rows:
        assert 1 <= len(r["answer_ids"]) <= 8
        assert r["prompt_ids"] == list(tokenizer.apply_chat_template(r["messages"],
                                                                     add_generation_prompt=True))
    # Two chunks in one continuous batch: both written, ids continue (resumed), one round logged.
    more = distill(model, tokenizer, AnswerStore(tmp_path / "answers"), [], chunk_size=3,
                   max_new_tokens=8, batch_size=4, minutes=10, log=logged.append, max_chunks=2,
                   cycle=("magpie",), chunks_per_round=2)
    assert more == 2 and len(list((tmp_path / "answers").glob("magpie.*.jsonl.gz"))) == 3
    ids = [r["id"] for r in AnswerStore(tmp_path / "answers").rows() if r["id"].startswith("magpie")]
    assert len(ids) == len(set(ids))
    rounds = [json.loads(e) for e in logged if '"round"' in e]
    assert rounds[-1]["round"] == ["magpie", "magpie"] and rounds[-1]["tokens"] > 0
    # Greedy answers: the same prompt answered again, alone, gives the same tokens.
    from medusa_mlx.training.distill import answer_chunks

    got = []
    answer_chunks(model, tokenizer, [[Prompt(magpie[0]["id"], magpie[0]["messages"])]], 8, 4,
                  lambda k, r: got.extend(r))
    assert got[0]["answer_ids"] == magpie[0]["answer_ids"]


@pytest.mark.smollm2
def test_followup_asks_about_the_models_own_answer():
    from medusa_mlx.load import load_backbone
    from medusa_mlx.training.distill import followup_prompts

    model, tokenizer, _ = load_backbone("smollm2")
    first = Prompt("oasst-3", [{"role": "user", "content": "What is the capital of France?"}])
    answer = tokenizer.encode("The capital of France is Paris.", add_special_tokens=False) + [2]
    prompts, info = followup_prompts(model, tokenizer, [(first, answer)] * 6, 0, set(),
                                     batch_size=6)
    assert info["sampled"] == 6 and info["kept"] == len(prompts) >= 1
    for p in prompts:
        assert [m["role"] for m in p.messages] == ["user", "assistant", "user"]
        assert p.messages[1]["content"] == "The capital of France is Paris."
        assert p.parent == "oasst-3" and p.source == "followup" and acceptable_prompt(
            p.messages[2]["content"], min_words=3)
    assert len({p.messages[2]["content"] for p in prompts}) == len(prompts)  # deduplicated


def test_an_answer_folder_is_its_chunks_not_its_log(tmp_path):
    """distill writes log.jsonl beside its chunks; reading the folder as answers
    took the log's rows for answers (KeyError: 'id')."""
    from medusa_mlx.training.prompt_sets import AnswerStore, answer_files, read_answers

    store = AnswerStore(tmp_path)
    store.write_chunk("real", [{"id": "oasst-1", "prompt_ids": [1, 2], "answer_ids": [3, 4]}])
    (tmp_path / "log.jsonl").write_text('{"round": ["real"], "tokens": 2}\n')
    files = answer_files([tmp_path])
    assert [f.name for f in files] == ["real.0000.jsonl.gz"]
    assert [r["id"] for r in read_answers(files)] == ["oasst-1"]


def test_status_counts_what_trains_per_source(tmp_path, capsys):
    """``distill --status``: answers and positions per source, as the trainers count
    them (answer tokens + the last prompt token's, cut at the sequence limit);
    held-out answers and duplicates never count as training positions."""
    from medusa_mlx.training.distill import main
    from medusa_mlx.training.sequences import answer_sequences

    held = next(f"oasst-{i}" for i in range(100) if is_held_out(f"oasst-{i}"))
    train = [f"oasst-{i}" for i in range(100) if not is_held_out(f"oasst-{i}")][:2]
    AnswerStore(tmp_path / "out").write_chunk("real", [
        {"id": train[0], "prompt_ids": [1, 2], "answer_ids": [3, 4, 5]},
        {"id": train[1], "prompt_ids": [1], "answer_ids": [6]},
        {"id": train[1], "prompt_ids": [1], "answer_ids": [6, 7]},  # a duplicate id
        {"id": held, "prompt_ids": [1], "answer_ids": [2]},
        {"id": "magpie-3", "prompt_ids": [4, 5], "answer_ids": [8, 9]}])
    with pytest.raises(SystemExit) as done:
        main(["--status", "--out", str(tmp_path / "out"), "--head-start"])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sources"]["oasst"] == {"answers": 2, "positions": 4 + 2, "held_out": 1}
    assert report["total"]["positions"] == 6 + (3 if not is_held_out("magpie-3") else 0)
    # The same count as the sequences the trainers read.
    groups = answer_sequences(sorted((tmp_path / "out").glob("*.gz")), 1024, held_out=False)
    assert report["total"]["positions"] == sum(len(t) - s for g in groups for t, s in g)
