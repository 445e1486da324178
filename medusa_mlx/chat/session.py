"""A chat session over a MedusaModel: conversation, KV-cache reuse, commands, stats.

No terminal code here (``ui.py`` renders with Rich), so tests can drive a
session with scripted input. Decoding itself stays in ``generate.py``; this
module only decides which tokens to feed and keeps the cache honest.

Cache reuse (``generate.ConversationCache``, shared with the server): a new turn
renders the whole conversation and keeps the longest common prefix of ``cached``
and that rendering (templates may re-render earlier turns a little differently,
e.g. the end-of-turn token after an answer cut at max tokens); only the rest is
fed. Afterwards ``cached`` is ``rendering + answer[:-1]``; anything beyond (a
half-verified tree after Ctrl-C, mlx-lm's look-ahead token) is trimmed away.
"""

import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from .stats import SessionStats, TurnStats
from ..conversation import ConversationCache, encode_prompt
from ..generate import ContextLengthError, medusa_generate_step
from ..lookup import PromptLookup
from ..model import MedusaModel
from ..acceptors import make_acceptor
from ..tree import PRESETS, tree_for_model

HELP = """\
/help            this help
/stats           session statistics (speed, accepted tokens per step)
/reset           forget the conversation (and empty the KV cache)
/tree NAME       verify a different candidate tree: {trees}
/medusa on|off   Medusa decoding, or plain mlx-lm decoding to compare speed
/lookup on|off   also draft from the conversation's own text (prompt lookup)
/calibrate       measure plain decoding speed now (for the speed-up figure)
/quit            leave (Ctrl-D too); Ctrl-C stops the current answer
tok/step = tokens emitted per verification (1 + head and lookup tokens accepted)."""


@dataclass
class StepEvent:
    """What one decoding step added, for a live display."""

    text: str  # newly decoded text (may be empty)
    tokens: list[int]
    accepted: int  # head tokens accepted this step (0 for plain decoding)
    turn: TurnStats  # running statistics of the answer so far


@dataclass
class CommandResult:
    text: str = ""
    quit: bool = False
    error: bool = False


class ChatSession:
    """One conversation with one model. ``ask`` runs a turn; ``command`` runs
    a /command. ``on_step`` callbacks may raise KeyboardInterrupt to stop an
    answer: the session stays consistent."""

    def __init__(
        self,
        model: MedusaModel,
        tokenizer,
        *,
        system: Optional[str] = None,
        max_tokens: int = 256,
        tree: str = "auto",
        medusa: bool = True,
        temp: float = 0.0,
        top_p: float = 0.0,
        seed: Optional[int] = None,
        accept: str = "lossless",
        lookup: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.max_tokens = max_tokens
        self.tree = tree_for_model(tree, model)
        self.medusa = medusa
        # One drafter for the conversation: earlier turns are text it can copy.
        self.lookup = PromptLookup() if lookup else None
        self.eos = set(tokenizer.eos_token_ids)
        # temp 0 is greedy (exact); otherwise Medusa accepts with ``accept``
        # ("lossless": same distribution as plain sampling) and plain turns
        # sample with mlx-lm's own sampler under the same settings.
        self.sampling = f"temp {temp}, top-p {top_p}, {accept} acceptance" if temp > 0 else "greedy"
        self.acceptor = make_acceptor(accept if temp > 0 else "greedy", temp=temp, top_p=top_p, seed=seed)
        self.sampler = make_sampler(temp, top_p) if temp > 0 else None
        if seed is not None:
            mx.random.seed(seed)  # plain sampling draws from mx.random
        self.stats = SessionStats()
        self.messages: list[dict] = []
        self.conversation = ConversationCache(model.make_cache(), model.make_drafter_cache())

    @property
    def cache(self) -> list:
        return self.conversation.cache

    @property
    def cached(self) -> list[int]:
        """Token ids whose keys/values are in ``cache``."""
        return self.conversation.tokens

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def reset(self) -> None:
        self.messages = []
        self.conversation.keep([])
        if self.lookup is not None:
            self.lookup = PromptLookup()

    def render(self, messages: list[dict]) -> list[int]:
        """The whole conversation as token ids, ready for the next answer."""
        if self.system:
            messages = [{"role": "system", "content": self.system}] + messages
        return encode_prompt(self.tokenizer, messages)

    # ------------------------------------------------------------------ turns

    def ask(
        self,
        text: str,
        on_step: Optional[Callable[[StepEvent], None]] = None,
        on_start: Optional[Callable[[TurnStats], None]] = None,
    ) -> TurnStats:
        """Answer ``text``; ``finish_reason`` is stop, length, context or interrupted.
        ``on_start`` sees the turn (prompt sizes) before the prompt is read."""
        self.messages.append({"role": "user", "content": text})
        ids = self.render(self.messages)
        keep = self.conversation.reuse(ids)
        turn = TurnStats(self.medusa, self.tree.name, prompt_tokens=len(ids) - keep, cached_tokens=keep)
        context = self.model.context_length
        if context is not None and len(ids) + 1 >= context:
            self.messages.pop()
            turn.finish_reason = "context"
            return turn
        generated: list[int] = []
        try:
            if on_start is not None:
                on_start(turn)
            self._decode(ids[keep:], turn, generated, on_step)
        except KeyboardInterrupt:
            turn.finish_reason = "interrupted"
        except ContextLengthError:
            turn.finish_reason = "context"
        # Whatever happened, the cache now holds at least what we recorded;
        # cut it back to exactly that (the last emitted token is never in it).
        self.conversation.keep(ids + generated[:-1] if generated else ids[:keep])
        if generated:
            self.messages.append({"role": "assistant", "content": turn.text})
        else:
            self.messages.pop()  # nothing was said: the turn did not happen
        self.stats.add(turn)
        return turn

    def _decode(self, prompt, turn, generated, on_step) -> None:
        detok = self.tokenizer.detokenizer
        detok.reset()
        first = None
        budget = self.max_tokens
        context = self.model.context_length
        if context is not None:
            budget = min(budget, context - len(self.cached) - len(prompt) - 1)
        steps = self._medusa_steps(prompt) if self.medusa else self._plain_steps(prompt, budget)
        try:
            with closing(steps):
                for tokens, accepted in steps:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    else:
                        turn.accepted.append(accepted)
                        turn.decode_tokens += len(tokens)
                        turn.decode_seconds = now - first
                    generated.extend(tokens)
                    for t in tokens:
                        if t not in self.eos:
                            detok.add_token(t)
                    turn.tokens = len(generated)
                    text = detok.last_segment
                    turn.text += text
                    if on_step is not None:
                        on_step(StepEvent(text, tokens, accepted, turn))
        finally:
            # Also after Ctrl-C: the recorded answer must hold all its text.
            detok.finalize()
            tail = detok.last_segment
            turn.text += tail
        if generated and generated[-1] in self.eos:
            turn.finish_reason = "stop"
        elif len(generated) >= self.max_tokens:
            turn.finish_reason = "length"
        else:
            turn.finish_reason = "context"
        if tail and on_step is not None:
            on_step(StepEvent(tail, [], 0, turn))

    def _medusa_steps(self, prompt: list[int]) -> Iterator[tuple[list[int], int]]:
        for step in medusa_generate_step(
            prompt,
            self.model,
            max_tokens=self.max_tokens,
            tree=self.tree,
            prompt_cache=self.cache,
            eos_token_ids=self.eos,
            acceptor=self.acceptor,
            lookup=self.lookup,
            drafter_cache=self.conversation.drafter,
        ):
            yield step.tokens, step.accepted

    def _plain_steps(self, prompt: list[int], budget: int) -> Iterator[tuple[list[int], int]]:
        """Plain mlx-lm decoding on the same cache (the backbone alone)."""
        if budget <= 0:
            return
        steps = generate_step(
            mx.array(prompt),
            self.model.backbone,
            max_tokens=budget,
            prompt_cache=self.cache,
            sampler=self.sampler,
        )
        with closing(steps):
            for token, _ in steps:
                yield [int(token)], 0
                if token in self.eos:
                    return

    def calibrate(self, n: int = 32) -> float:
        """Plain decoding speed (tokens/s) on a scratch cache, so that the
        speed-up can be shown before any /medusa off turn."""
        prompt = self.render([{"role": "user", "content": "Tell me a story."}])
        cache = self.model.make_cache()
        first = None
        count = 0
        steps = generate_step(
            mx.array(prompt), self.model.backbone, max_tokens=n, prompt_cache=cache, sampler=self.sampler
        )
        for _ in steps:
            if first is None:
                first = time.perf_counter()
            else:
                count += 1
        seconds = time.perf_counter() - first
        self.stats.add_plain(count, seconds)
        return count / max(seconds, 1e-9)

    # --------------------------------------------------------------- commands

    def command(self, line: str) -> CommandResult:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return CommandResult(quit=True)
        if name == "/help":
            return CommandResult(HELP.format(trees=", ".join(PRESETS)))
        if name == "/stats":
            return CommandResult(self.stats.report(self.tree.depth))
        if name == "/reset":
            self.reset()
            return CommandResult("conversation cleared")
        if name == "/tree":
            return self._set_tree(arg)
        if name == "/medusa":
            if arg not in ("on", "off"):
                return CommandResult("usage: /medusa on|off", error=True)
            self.medusa = arg == "on"
            return CommandResult(f"Medusa {'on' if self.medusa else 'off (plain mlx-lm decoding)'}")
        if name == "/lookup":
            if arg not in ("on", "off"):
                return CommandResult("usage: /lookup on|off", error=True)
            if (arg == "on") != (self.lookup is not None):
                # A fresh drafter starts from the next prompt: the whole conversation.
                self.lookup = PromptLookup() if arg == "on" else None
                self.conversation.keep([])
            return CommandResult(f"prompt lookup {arg}")
        if name == "/calibrate":
            return CommandResult(f"plain decoding: {self.calibrate():.1f} tok/s")
        return CommandResult(f"unknown command {name}; /help lists them", error=True)

    def _set_tree(self, name: str) -> CommandResult:
        if not name:
            return CommandResult(f"tree {self.tree.name}; presets: {', '.join(PRESETS)}")
        try:
            self.tree = tree_for_model(name, self.model)
        except ValueError as e:
            return CommandResult(str(e), error=True)
        return CommandResult(f"tree {self.tree.name}: {self.tree.size} nodes, depth {self.tree.depth}")


@dataclass
class Loaded:
    session: ChatSession
    model_name: str
    heads: str  # where the heads come from, for the header
    untrained: bool


def load_session(args) -> Loaded:
    """Load model and heads for ``args`` (see :func:`configure_parser`)."""
    import warnings

    from ..load import load

    # load() warns when it falls back to untrained heads; the chat header
    # says so in plain words instead of a Python warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tokenizer = load(args.model, False if args.no_heads else args.medusa)
    untrained = False
    for w in caught:
        if "untrained heads" in str(w.message):
            untrained = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if args.no_heads:
        heads = "none (prompt lookup alone)"
    elif args.medusa:
        heads = args.medusa
    elif untrained:
        heads = f"untrained (random) x{model.num_heads}"
    else:
        heads = f"shipped with medusa-mlx ({model.num_heads} heads)"
    session = ChatSession(
        model,
        tokenizer,
        system=args.system,
        max_tokens=args.max_tokens,
        tree=args.tree,
        medusa=not args.no_medusa,
        temp=args.temp,
        top_p=args.top_p,
        seed=args.seed,
        accept=args.accept,
        lookup=args.lookup or args.no_heads,
    )
    name = args.model or "SmolLM2-135M-Instruct (embedded)"
    return Loaded(session, name, heads, untrained)
