"""The chat: multi-turn KV-cache reuse, /commands, Ctrl-C, stats, pipe mode.

Sessions are driven with scripted input on stories260K (with and without a
chat template); one subprocess test runs ``chat.py`` on the embedded SmolLM2.
"""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)

import io
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from rich.console import Console

import medusa_mlx.chat.session as chat
from mlx_lm.utils import common_prefix_len

from medusa_mlx.chat.session import ChatSession
from medusa_mlx.chat.stats import status_line, turn_summary
from medusa_mlx.chat.ui import ChatUI
from medusa_mlx.loaders.llama2c import load_llama2c, load_llama2c_tokenizer
from medusa_mlx.model import attach_heads
from required_data import require_file

REPO = Path(__file__).resolve().parents[1]
# A minimal chat template; "</s>" is the model's EOS, so it ends turns.
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def stories_with_tokenizers(shared_dir):
    """stories260K's backbone, its tokenizer, and one with TEMPLATE."""
    path = require_file(shared_dir / "data" / "stories260K.bin")
    backbone, tokenizer = load_llama2c(path)
    templated = load_llama2c_tokenizer(path.with_name("tok512.model"))
    templated.chat_template = TEMPLATE
    return backbone, tokenizer, templated


@pytest.fixture(scope="module")
def stories(shared_dir):
    backbone, tokenizer, templated = stories_with_tokenizers(shared_dir)
    return attach_heads(backbone, num_heads=3, seed=0), tokenizer, templated


@pytest.fixture
def calls(monkeypatch):
    """Record every call of the Medusa generator: prompt fed, cache offset,
    steps yielded. Heads are replaced by an oracle that is right on a varying
    number of depths, so accepted lengths vary (random heads accept ~nothing)."""
    log = []
    real = chat.medusa_generate_step

    def recording(prompt, model, *, prompt_cache, **kwargs):
        call = {"prompt": len(prompt), "offset": prompt_cache[0].offset, "steps": []}
        call["acceptor"] = type(kwargs.get("acceptor")).__name__
        log.append(call)
        # The oracle needs the whole context: the session's cached tokens + the prompt.
        context = _current_session[0].cached[: prompt_cache[0].offset]
        proposer = _oracle(model, context, len(prompt), lambda: len(call["steps"]))
        for step in real(prompt, model, prompt_cache=prompt_cache, proposer=proposer, **kwargs):
            call["steps"].append(step)
            yield step

    monkeypatch.setattr(chat, "medusa_generate_step", recording)
    return log


_current_session = [None]  # the session the oracle serves (set by session())


def _oracle(model, context, prompt_len, n_steps):
    """Propose the true greedy continuation for the first ``n % 4`` depths of
    step n, wrong tokens below that."""

    def propose(hidden, history):
        full = context + history
        truth = [t for t, _ in generate_step(mx.array(full), model.backbone, max_tokens=3)]
        right = n_steps() % 4
        rows = [[t if d < right else (t + 1) % 512] + [(t + r) % 512 for r in range(2, 11)] for d, t in enumerate(truth)]
        return mx.array(rows)

    return propose


def session(stories, template=True, **kwargs):
    model, plain_tok, templated = stories
    kwargs.setdefault("max_tokens", 16)
    s = ChatSession(model, templated if template else plain_tok, **kwargs)
    _current_session[0] = s
    return s


def fresh_answer(stories, history, question, template=True, **kwargs):
    """What a new session says after ``history`` (no cache to reuse)."""
    s = session(stories, template, **kwargs)
    s.messages = [dict(m) for m in history]
    turn = s.ask(question)
    return turn, s


@pytest.mark.parametrize("template", [True, False], ids=["template", "continuation"])
def test_second_turn_feeds_only_the_new_tokens(stories, calls, template):
    s = session(stories, template)
    first = s.ask("Once upon a time, a girl named Lily found a big red ball in the park.")
    ids1 = s.render(s.messages[:1])
    assert calls[0]["offset"] == 0 and calls[0]["prompt"] == len(ids1)
    assert first.tokens > 0 and s.cache[0].offset == len(s.cached)
    cached1 = list(s.cached)

    second = s.ask("The dog was happy.")
    ids2 = s.render(s.messages[:3])
    reused = common_prefix_len(cached1, ids2)
    assert reused > len(ids1)  # the first question and part of its answer at least
    assert calls[1]["offset"] == reused == second.cached_tokens
    assert calls[1]["prompt"] == len(ids2) - reused == second.prompt_tokens
    if template:  # the answer re-renders token for token, then "</s>user: ..."
        assert reused == len(cached1)

    # Reusing the cache changes nothing: a fresh session says the same.
    again, fresh = fresh_answer(stories, s.messages[:2], "The dog was happy.", template)
    assert again.text == second.text and fresh.cached == s.cached


def test_reset_empties_conversation_and_cache(stories, calls):
    s = session(stories)
    s.ask("Tom had a cat.")
    assert s.command("/reset").text == "conversation cleared"
    assert s.messages == [] and s.cached == [] and s.cache[0].offset == 0
    s.ask("Tom had a cat.")
    assert calls[1]["offset"] == 0 and calls[1]["prompt"] == calls[0]["prompt"]


@pytest.mark.parametrize("where", ["callback", "forward"])
def test_ctrl_c_keeps_the_session_consistent(stories, calls, monkeypatch, where):
    s = session(stories, max_tokens=24)
    if where == "callback":

        def on_step(event):
            if event.turn.steps == 2:
                raise KeyboardInterrupt

    else:  # mid-verification: the cache holds a half-verified tree
        on_step = None
        real_forward, count = s.model.forward, [0]

        def forward(tokens, cache):
            out = real_forward(tokens, cache)
            count[0] += 1
            if count[0] == 3:
                mx.eval(out)
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(s.model, "forward", forward)
    turn = s.ask("Lily and Ben went to the sea.", on_step)
    if where == "forward":
        monkeypatch.delattr(s.model, "forward")
    assert turn.finish_reason == "interrupted" and 0 < turn.tokens < 24
    assert s.cache[0].offset == len(s.cached)
    assert s.messages[-1] == {"role": "assistant", "content": turn.text}

    after = s.ask("They saw a fish.")
    again, fresh = fresh_answer(stories, s.messages[:2], "They saw a fish.", max_tokens=24)
    assert after.finish_reason != "interrupted"
    assert after.text == again.text and s.cached == fresh.cached


def test_stats_report_what_the_generator_yielded(stories, calls):
    s = session(stories, max_tokens=40)
    events = []
    turn = s.ask("Once upon a time", events.append)
    yielded = [step.accepted for step in calls[0]["steps"]]
    assert yielded[0] == 0  # the first token comes from the prompt, not the heads
    assert turn.accepted == yielded[1:]
    assert len(set(turn.accepted)) > 2, "the oracle should give varied accepted lengths"
    assert [e.accepted for e in events if e.tokens] == yielded
    assert turn.decode_tokens == sum(len(step.tokens) for step in calls[0]["steps"][1:])

    counts = Counter(yielded[1:])
    assert s.stats.accepted == counts
    summary = turn_summary(turn, None, s.tree.depth)
    shown = {int(k): int(n) for k, n in re.findall(r"(\d+):.(\d+)", summary.splitlines()[1])}
    assert {k: n for k, n in shown.items() if n} == dict(counts)
    assert f"{turn.decode_tokens / len(yielded[1:]):.2f} tok/step" in summary
    status = status_line(turn, yielded[-1], None)
    assert f"step {len(yielded) - 1} · +{yielded[-1]} accepted" in status


def test_plain_turns_match_medusa_and_give_the_speed_up(stories, calls):
    s = session(stories, max_tokens=20)
    assert "plain" in s.command("/medusa off").text
    s.ask("Once upon a time")
    s.ask("The sun was hot.")
    assert calls == []  # plain decoding never touches the Medusa generator
    assert s.stats.plain_tps is not None
    _, medusa = fresh_answer(stories, s.messages[:2], "The sun was hot.", max_tokens=20)
    assert medusa.cached == s.cached  # greedy: same tokens, same cache

    s.command("/medusa on")
    turn = s.ask("Then it rained.")
    assert "x vs plain" in turn_summary(turn, s.stats.plain_tps, s.tree.depth)
    assert "speed-up:" in s.command("/stats").text


def test_context_overflow_is_reported_not_raised(stories):
    s = session(stories, template=False, max_tokens=200)
    too_long = s.ask("the cat sat " * 200)
    assert too_long.finish_reason == "context" and too_long.tokens == 0
    assert s.messages == [] and s.cache[0].offset == 0
    words = "Lily saw a bird."
    while len(s.render([{"role": "user", "content": words}])) < 490:
        words += " Lily saw a bird."
    for medusa in (True, False):
        s.reset()
        s.medusa = medusa
        turn = s.ask(words)
        assert turn.finish_reason == "context" and turn.tokens > 0
        assert len(s.cached) + 1 <= s.model.context_length


def test_sampling_is_seeded_and_reaches_both_decoders(stories, monkeypatch):
    acceptors = []
    real = chat.medusa_generate_step

    def recording(*args, acceptor, **kwargs):
        acceptors.append(type(acceptor).__name__)
        return real(*args, acceptor=acceptor, **kwargs)

    monkeypatch.setattr(chat, "medusa_generate_step", recording)

    def story(seed, medusa=True, temp=1.5):
        s = session(stories, template=False, max_tokens=12, temp=temp, seed=seed, medusa=medusa)
        return s.ask("Once upon a time").text

    assert story(3) == story(3) and story(3, medusa=False)  # a seed fixes the story
    assert acceptors == ["LosslessAcceptor"] * 2
    greedy = story(None, temp=0.0)
    assert any(story(seed) != greedy for seed in range(4))  # temperature matters


def test_commands(stories):
    s = session(stories)
    assert s.command("/tree tree-8").text.startswith("tree tree-8")
    assert s.tree.name == "tree-8"
    assert s.command("/tree nope").error and s.tree.name == "tree-8"
    assert s.command("/medusa maybe").error
    assert "/reset" in s.command("/help").text
    assert s.command("/quit").quit
    assert s.command("/bogus").error


def test_ui_pipe_and_terminal_rendering(stories, calls, capsys):
    s = session(stories, max_tokens=12)
    pipe = ChatUI(Console(file=io.StringIO(), soft_wrap=True), s, interactive=False)
    assert pipe.handle("Once upon a time")
    assert pipe.handle("/stats") and not pipe.handle("/quit")
    assert capsys.readouterr().out.strip() == s.messages[1]["content"].strip()
    out = pipe.console.file.getvalue()
    assert "accepted/step" in out and "turns: 1" in out

    term = Console(file=io.StringIO(), force_terminal=True, width=60, height=20, record=True)
    ui = ChatUI(term, s, interactive=True)
    ui.handle("The dog was happy.")
    text = term.export_text()
    assert s.messages[3]["content"].split()[0] in text and "tok/step" in text


def test_bad_model_is_one_line_error():
    run = subprocess.run(
        [sys.executable, "chat.py", "--model", "./no-such-model.bin"],
        cwd=REPO, input="hi\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error:") and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.smollm2
def test_chat_py_answers_from_a_pipe_offline():
    run = subprocess.run(
        [sys.executable, "chat.py", "--max-tokens", "40"],
        cwd=REPO, input="What is the capital of France?\n", capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    assert "tok/step" in run.stdout and "accepted/step" in run.stdout


@pytest.mark.parametrize("heads", [True, False], ids=["heads", "no-heads"])
def test_lookup_turns_say_what_plain_turns_say(stories, heads):
    """Prompt lookup over the whole conversation (one drafter across turns,
    with and without heads): the same answers as plain decoding, branches
    copied from earlier turns accepted."""
    from medusa_mlx.model import medusa_model

    model, plain_tok, templated = stories
    if not heads:
        model = medusa_model(model.backbone, None)
    questions = ["Tom had a red kite.", "Tom had a red kite. Tell me again."]
    looked = ChatSession(model, templated, max_tokens=40, lookup=True)
    plain = ChatSession(model, templated, max_tokens=40, medusa=False)
    turns = [looked.ask(q) for q in questions]
    assert [plain.ask(q).text for q in questions] == [t.text for t in turns]
    assert looked.cached == plain.cached
    assert sum(sum(t.accepted) for t in turns) > 0
    assert "lookup off" in looked.command("/lookup off").text and looked.lookup is None
    assert looked.command("/lookup maybe").error
    looked.command("/lookup on")
    assert looked.ask("Once upon a time").text == plain.ask("Once upon a time").text
