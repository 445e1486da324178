"""Rich rendering of a chat session (``session.py`` holds the session logic, ``cli.py`` the arguments).

In a terminal: a header panel, a prompt with line editing, answers that
stream step by step above a live status line, then a compact summary. In a
pipe (``echo hi | python chat.py``): plain text only, header on stderr.
"""

import sys
from contextlib import nullcontext
from typing import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from ..errors import InputError
from .session import ChatSession, Loaded, StepEvent, load_session
from .stats import TurnStats, status_line, turn_summary

# Steps that accepted head tokens alternate between these, so neighbouring
# multi-token chunks stay distinguishable; one-token steps keep the default.
CHUNK_STYLES = ("bold cyan", "bold magenta")


def run(args) -> int:
    console = Console(highlight=False)
    interactive = sys.stdin.isatty() and console.is_terminal
    if not interactive:  # a pipe or a file: no wrapping at an imaginary 80 columns
        console = Console(highlight=False, soft_wrap=True)
    notes = console if interactive else Console(stderr=True, highlight=False, soft_wrap=True)
    with notes.status("loading the model…") if interactive else nullcontext():
        loaded = load_session(args)
    ui = ChatUI(console, loaded.session, interactive)
    ui.header(notes, loaded)
    if args.calibrate:
        with notes.status("measuring plain decoding speed…") if interactive else nullcontext():
            rate = loaded.session.calibrate()
        notes.print(f"plain decoding: {rate:.1f} tok/s", style="dim")
    lines = read_terminal(console) if interactive else read_pipe(sys.stdin)
    for line in lines:
        if not ui.handle(line):
            break
    return 0


def read_pipe(stream) -> Iterator[str]:
    """Lines of a piped stdin; bytes that are not UTF-8 end the chat with one line."""
    try:
        for line in stream:
            yield line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise InputError(f"stdin is not valid UTF-8 (byte {e.object[e.start:e.start + 1]!r} "
                         f"at offset {e.start} of a read)") from None


def read_terminal(console: Console) -> Iterator[str]:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield console.input("[bold green]you ›[/] ")
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print("\n[dim](Ctrl-D or /quit to leave)[/]")


class ChatUI:
    def __init__(self, console: Console, session: ChatSession, interactive: bool):
        self.console = console
        self.session = session
        self.interactive = interactive
        self._chunks = 0

    def header(self, out: Console, loaded: Loaded) -> None:
        s = self.session
        mode = "Medusa" if s.medusa else "plain mlx-lm decoding (--no-medusa)"
        if s.medusa and s.lookup is not None:
            mode += " + prompt lookup"
        tree = (
            f"tree {s.tree.name} ({s.tree.size} nodes, depth {s.tree.depth}) · "
            f"max {s.max_tokens} tokens · {s.sampling} · {mode}"
        )
        heads = Text(f"heads: {loaded.heads}")
        if loaded.untrained:
            heads = Text(
                "heads: UNTRAINED (random) - same answers, but expect no speed-up; "
                "use trained heads with --medusa PATH",
                style="bold yellow",
            )
        if not s.has_template:
            tree += " · no chat template: the chat is one continued text"
        if not self.interactive:
            out.print(f"medusa-chat · {loaded.model_name} · {heads.plain} · {tree}", style="dim")
            return
        hint = Text(
            "/help commands · Ctrl-C stops an answer · Ctrl-D quits · "
            "coloured text: several tokens landed in one step",
            style="dim",
        )
        body = Group(heads, Text(tree), hint)
        out.print(Panel(body, title=f"Medusa chat · {loaded.model_name}", title_align="left", border_style="blue"))

    def handle(self, line: str) -> bool:
        """Run one input line; False means leave."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            result = self.session.command(text)
            if result.quit:
                return False
            self.console.print(result.text, style="red" if result.error else "dim")
            return True
        if not self.interactive:
            self.console.print(f"you › {text}")
        self.answer(text)
        return True

    def answer(self, text: str) -> None:
        if self.interactive:
            turn = self._answer_live(text)
        else:
            turn = self._answer_plain(text)
        if turn.finish_reason == "context" and not turn.tokens:
            self.console.print(
                f"This conversation ({turn.prompt_tokens + turn.cached_tokens} tokens) no longer "
                "fits the model's context: /reset to start over.",
                style="yellow",
            )
            return
        summary = turn_summary(turn, self.session.stats.plain_tps, self.session.tree.depth)
        self.console.print(summary, style="dim")
        if turn.finish_reason == "context":
            self.console.print("The context is full: /reset to start over.", style="yellow")
        if self.interactive:
            self.console.print()

    def _answer_plain(self, text: str) -> TurnStats:
        def on_step(event: StepEvent) -> None:
            sys.stdout.write(event.text)
            sys.stdout.flush()

        turn = self.session.ask(text, on_step)
        if turn.tokens:
            sys.stdout.write("\n")
        return turn

    def _answer_live(self, text: str) -> TurnStats:
        answer = Text()
        last = [0]  # accepted count of the latest step, for the status line
        plain_tps = self.session.stats.plain_tps

        def view(turn: TurnStats) -> Group:
            status = Text(status_line(turn, last[0], plain_tps), style="dim")
            return Group(self._tail(answer), status)

        with Live(console=self.console, auto_refresh=False, transient=True) as live:

            def on_start(turn: TurnStats) -> None:
                live.update(view(turn), refresh=True)

            def on_step(event: StepEvent) -> None:
                if event.tokens:
                    last[0] = event.accepted
                answer.append(event.text, style=self._style(event))
                live.update(view(event.turn), refresh=True)

            turn = self.session.ask(text, on_step, on_start)
        if turn.tokens:
            self.console.print(answer)
        return turn

    def _style(self, event: StepEvent) -> str:
        if event.accepted < 1:
            return ""
        self._chunks += 1
        return CHUNK_STYLES[self._chunks % len(CHUNK_STYLES)]

    def _tail(self, text: Text) -> Text:
        """The last screenful of the answer: a live display taller than the
        terminal cannot be redrawn in place (the full answer prints at the end)."""
        lines = text.wrap(self.console, self.console.width)
        keep = max(self.console.height - 4, 1)
        return Text("\n").join(lines[-keep:] if len(lines) > keep else lines)
