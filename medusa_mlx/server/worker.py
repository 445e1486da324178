"""The generation worker: the main thread owns the model and runs every request.

HTTP threads validate a request, wrap it in a :class:`Job` and :meth:`Worker.submit`
it; :meth:`Worker.run` (on the main thread) answers through the job's event queue
(:class:`Delta` text, then :class:`Finished` or :class:`Failed`). All MLX work
stays on the thread that loaded the model: with MLX 0.32 on a Linux CPU, a
process whose MLX arrays were made on a second thread (loading, or sampling with
``mx.random``) aborted at exit in 1 of 3 tries here ("terminate called without
an active exception"), and MLX streams are per thread.

Scheduling: up to ``concurrency`` requests are *interleaved*, one Medusa step
each in turn, each on its own KV cache; the rest wait in a bounded FIFO queue
(full: 503). Measured (scripts/bench_server.py, SmolLM2, 8 chats x 32 tokens from
4 clients, 2 shared cores, OpenBLAS): first text after 2.3 s (median) with 4
interleaved against 23.9 s first come first served, for the same aggregate
throughput (3.2 vs 2.8 tok/s, within this box's noise). Each request's tokens are
exactly what it would get alone (greedy answers equal the single-request ones).
Real batching (several requests in one verify forward) is not done: the tree
mask comes from a single-sequence cache (``TreeKVCache``), and a batched verify
needs per-row offsets and masks. The verify-cost curve says it could pay on a CPU
(32 tokens in one forward cost 2.67x one token; 4 requests of tree-8 one after
the other 4 x 1.43x).

A job whose client went away is ``cancel()``-ed by its HTTP thread: the worker
drops it before its next step (or before it starts), so its turn is freed at
once. Whatever a job does, a failure is reported to that job alone.
"""

import logging
import queue
import threading
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..acceptors import make_acceptor
from ..errors import ContextLengthError, UsageError
from ..generate import medusa_generate_step
from ..lookup import PromptLookup
from ..tree import tree_for_model
from .conversations import ConversationPool
from .requests import GenerationRequest, RequestError

log = logging.getLogger("medusa_mlx.server")


class Delta(NamedTuple):
    text: str


class Finished(NamedTuple):
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    medusa: dict  # steps, tokens_per_step, accepted, tree, speeds


class Failed(NamedTuple):
    error: RequestError


class Job:
    """One request travelling from an HTTP thread to the worker and back."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


class StopMatcher:
    """Text-level ``stop`` sequences on streamed text: text that could still
    become a stop sequence is held back until it is known not to be one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.text = ""
        self.sent = 0

    def feed(self, new: str) -> tuple[str, bool]:
        """Add ``new``; return the text safe to send and whether a stop sequence was hit
        (the text is then cut right before it)."""
        self.text += new
        if not self.stops:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out, False
        start = max(0, self.sent - max(len(s) for s in self.stops) + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self.flush(), True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        safe = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent:safe], safe
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


@dataclass
class Generation:
    """A running job: its conversation cache, Medusa step generator and counts."""

    job: Job
    conversation: object  # generate.ConversationCache
    steps: object  # medusa_generate_step generator
    detokenizer: object
    stop: StopMatcher
    cached_tokens: int
    generated: list
    decode_steps: int = 0
    accepted: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class Worker:
    def __init__(self, model, tokenizer, *, tree: str = "auto", concurrency: int = 4,
                 queue_size: int = 32, cache_size: int = 10, lookup: bool = False):
        if concurrency < 1 or queue_size < 1:
            raise UsageError("--decode-concurrency and --queue-size must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.tree = tree_for_model(tree, model)
        self.lookup = lookup  # prompt lookup: each request drafts from its own messages too
        self.concurrency = concurrency
        self.pending: queue.Queue = queue.Queue(maxsize=queue_size)
        self.pool = ConversationPool(model.make_cache, cache_size, model.make_drafter_cache)
        self.running = False

    # ------------------------------------------------------------ HTTP side

    @property
    def healthy(self) -> bool:
        return self.running

    def submit(self, job: Job) -> None:
        if not self.running:
            raise RequestError("the generation worker is not running", 503, kind="server_error")
        try:
            self.pending.put_nowait(job)
        except queue.Full:
            raise RequestError(
                f"server busy: {self.pending.maxsize} requests are already waiting; retry later",
                503, code="server_busy", kind="server_error",
            ) from None

    def stop(self) -> None:
        """Make :meth:`run` return (after the step it is in)."""
        self.pending.put(None)

    # ---------------------------------------------------------- worker side

    def run(self) -> None:
        """Serve jobs until :meth:`stop` (blocks; call it on the thread that loaded the model)."""
        self.running = True
        try:
            self._loop()
        finally:
            self.running = False

    def _loop(self) -> None:
        active: list[Generation] = []
        while True:
            while len(active) < self.concurrency:
                try:
                    job = self.pending.get(timeout=0.5) if not active else self.pending.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                if job.cancelled.is_set():
                    log.info("request cancelled while waiting: dropped")
                else:
                    started = self._guarded(job, lambda: self._start(job))
                    if started is not None:
                        active.append(started)
            for gen in list(active):
                if self._guarded(gen.job, lambda: self._advance(gen)) is not False:
                    active.remove(gen)

    def _guarded(self, job: Job, action):
        """Run ``action``; any failure goes to this job only (the worker lives on)."""
        try:
            return action()
        except ContextLengthError as e:
            job.events.put(Failed(RequestError(str(e), code="context_length_exceeded")))
        except Exception as e:  # noqa: BLE001  (one request must never take the server down)
            log.exception("request failed")
            job.events.put(Failed(RequestError(f"generation failed: {e}", 500, kind="server_error")))
        return None

    def _start(self, job: Job) -> Generation:
        r = job.request
        conversation = self.pool.take(r.prompt)
        kept = conversation.reuse(r.prompt)
        acceptor = make_acceptor(r.accept, temp=r.temperature, top_p=r.top_p, min_p=r.min_p,
                                 top_k=r.top_k, seed=r.seed)
        lookup = None
        if self.lookup:  # the whole conversation is text to copy, the reused part included
            lookup = PromptLookup()
            lookup.begin(r.prompt[:kept])
        steps = medusa_generate_step(
            r.prompt[kept:], self.model, max_tokens=r.max_tokens, tree=self.tree, acceptor=acceptor,
            prompt_cache=conversation.cache, eos_token_ids=self.tokenizer.eos_token_ids,
            lookup=lookup, drafter_cache=conversation.drafter,
        )
        detokenizer = self.tokenizer.detokenizer
        detokenizer.reset()
        return Generation(job, conversation, steps, detokenizer, StopMatcher(r.stop), kept, [])

    def _advance(self, gen: Generation) -> bool:
        """One Medusa step of ``gen``; True when it is finished (or dropped)."""
        if gen.job.cancelled.is_set():
            log.info("request cancelled after %d of at most %d tokens: its turn is free",
                     len(gen.generated), gen.job.request.max_tokens)
            return self._end(gen, None)
        try:
            step = next(gen.steps)
        except StopIteration:
            return self._end(gen, "done")
        except BaseException:
            gen.steps.close()  # the cache may hold half a step: never reuse it
            raise
        first = not gen.generated
        gen.generated.extend(step.tokens)
        if first:
            gen.prefill_seconds = step.timings.total
        else:
            gen.decode_steps += 1
            gen.accepted += step.accepted
            gen.decode_seconds += step.timings.total
        eos = self.tokenizer.eos_token_ids
        for t in step.tokens:
            if t not in eos:
                gen.detokenizer.add_token(t)
        text, stopped = gen.stop.feed(gen.detokenizer.last_segment)
        if text:
            gen.job.events.put(Delta(text))
        return self._end(gen, "stop") if stopped else False

    def _end(self, gen: Generation, how: Optional[str]) -> bool:
        """Finish ``gen``: ``how`` is "done" (generator ended), "stop" (a stop
        sequence) or None (cancelled: nothing more is sent)."""
        gen.steps.close()
        r = gen.job.request
        gen.conversation.keep(r.prompt + gen.generated[:-1] if gen.generated else gen.conversation.tokens)
        self.pool.give_back(gen.conversation)
        if how is None:
            return True
        reason = "stop"
        if how == "done":
            gen.detokenizer.finalize()
            text, stopped = gen.stop.feed(gen.detokenizer.last_segment)
            text += gen.stop.flush()
            if text:
                gen.job.events.put(Delta(text))
            ended_by_eos = bool(gen.generated) and gen.generated[-1] in self.tokenizer.eos_token_ids
            reason = "stop" if stopped or ended_by_eos else "length"
        decode_tokens = len(gen.generated) - 1 if gen.generated else 0
        medusa = {
            "tree": self.tree.name,
            "steps": gen.decode_steps,
            "accepted_tokens": gen.accepted,
            "tokens_per_step": round(decode_tokens / gen.decode_steps, 3) if gen.decode_steps else 0.0,
            "prompt_tps": round((len(r.prompt) - gen.cached_tokens) / max(gen.prefill_seconds, 1e-9), 1),
            "generation_tps": round(decode_tokens / gen.decode_seconds, 1) if gen.decode_seconds else 0.0,
        }
        gen.job.events.put(Finished(reason, len(r.prompt), len(gen.generated), gen.cached_tokens, medusa))
        return True
