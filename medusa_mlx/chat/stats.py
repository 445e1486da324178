"""Speed and acceptance statistics of a chat, and their one-line texts.

Speeds count decoding only: from the first answer token (which needs the
prompt's prefill) to the last, so Medusa and plain turns compare fairly.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class TurnStats:
    medusa: bool
    tree: str
    prompt_tokens: int = 0  # fed to the model this turn
    cached_tokens: int = 0  # reused from the conversation's KV cache
    tokens: int = 0  # answer tokens, EOS included
    accepted: list[int] = field(default_factory=list)  # per decoding step (first token excluded)
    decode_tokens: int = 0  # tokens after the first one
    decode_seconds: float = 0.0
    text: str = ""
    finish_reason: Optional[str] = None  # stop, length, context, interrupted

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def tokens_per_step(self) -> float:
        return self.decode_tokens / self.steps if self.steps else 0.0

    @property
    def tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class SessionStats:
    turns: int = 0
    medusa_tokens: int = 0
    medusa_seconds: float = 0.0
    plain_tokens: int = 0
    plain_seconds: float = 0.0
    accepted: Counter = field(default_factory=Counter)  # accepted length -> steps

    def add(self, turn: TurnStats) -> None:
        self.turns += 1
        if turn.medusa:
            self.medusa_tokens += turn.decode_tokens
            self.medusa_seconds += turn.decode_seconds
            self.accepted.update(turn.accepted)
        else:
            self.add_plain(turn.decode_tokens, turn.decode_seconds)

    def add_plain(self, tokens: int, seconds: float) -> None:
        self.plain_tokens += tokens
        self.plain_seconds += seconds

    @property
    def plain_tps(self) -> Optional[float]:
        # A handful of tokens is too noisy to compare against.
        return self.plain_tokens / self.plain_seconds if self.plain_tokens >= 4 else None

    @property
    def medusa_tps(self) -> Optional[float]:
        return self.medusa_tokens / self.medusa_seconds if self.medusa_tokens >= 4 else None

    def report(self, depth: int) -> str:
        steps = sum(self.accepted.values())
        lines = [f"turns: {self.turns}"]
        if steps:
            per_step = sum((k + 1) * n for k, n in self.accepted.items()) / steps
            lines.append(f"Medusa: {steps} steps, {per_step:.2f} tok/step")
        if self.medusa_tps:
            lines.append(f"Medusa speed: {self.medusa_tps:.1f} tok/s")
        if self.plain_tps:
            lines.append(f"plain speed:  {self.plain_tps:.1f} tok/s")
        if self.medusa_tps and self.plain_tps:
            lines.append(f"speed-up:     {self.medusa_tps / self.plain_tps:.2f}x")
        else:
            lines.append("speed-up:     unknown (try /calibrate or a /medusa off turn)")
        if steps:
            lines.append(histogram_line(self.accepted, depth))
        return "\n".join(lines)


def histogram_line(accepted, depth: int) -> str:
    """``accepted/step  0 ▇ 12  1 ▃ 5 ..``: how many steps accepted k head tokens."""
    counts = Counter(accepted)
    top = max(counts.values(), default=0)
    cells = []
    for k in range(max(depth, max(counts, default=0)) + 1):
        n = counts.get(k, 0)
        bar = BARS[round(n / top * (len(BARS) - 1))] if top else BARS[0]
        cells.append(f"{k}:{bar}{n}")
    return "accepted/step  " + "  ".join(cells)


def speed_text(tps: float, plain_tps: Optional[float]) -> str:
    text = f"{tps:.1f} tok/s"
    if plain_tps:
        text += f" · {tps / plain_tps:.2f}x vs plain {plain_tps:.1f} tok/s"
    return text


def status_line(turn: TurnStats, last_accepted: int, plain_tps: Optional[float]) -> str:
    """The live line under an answer that is being written."""
    if not turn.tokens:
        return f"reading prompt: {turn.prompt_tokens} new tokens, {turn.cached_tokens} reused from cache"
    if not turn.steps:
        return "first token"
    if not turn.medusa:
        return f"plain decoding · {turn.decode_tokens} tokens · {speed_text(turn.tps, None)}"
    return (
        f"step {turn.steps} · +{last_accepted} accepted · "
        f"{turn.tokens_per_step:.2f} tok/step · {speed_text(turn.tps, plain_tps)}"
    )


def turn_summary(turn: TurnStats, plain_tps: Optional[float], depth: int) -> str:
    """Two lines after an answer: speed and prompt, then the acceptance histogram."""
    ending = {"stop": "", "length": " · max tokens", "context": " · context full",
              "interrupted": " · interrupted"}.get(turn.finish_reason or "", "")  # fmt: skip
    prompt = f"prompt {turn.prompt_tokens} new + {turn.cached_tokens} cached tokens"
    if not turn.medusa:
        return f"plain · {turn.tokens} tokens · {speed_text(turn.tps, None)} · {prompt}{ending}"
    head = (
        f"{turn.tokens} tokens · {turn.steps} Medusa steps · {turn.tokens_per_step:.2f} tok/step · "
        f"{speed_text(turn.tps, plain_tps)} · {prompt}{ending}"
    )
    return head + "\n" + histogram_line(turn.accepted, depth)
