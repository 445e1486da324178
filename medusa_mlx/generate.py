"""The Medusa decoding loop, shaped like mlx-lm's generate.py.

``medusa_generate_step`` yields one :class:`MedusaStep` per verification;
``stream_generate`` adds detokenised text and statistics; ``generate`` returns
the text. Invariant between steps: the KV cache holds every token except the
last one emitted (the tree root), exactly as in plain decoding. Like mlx-lm's
generate.py it also holds its thin CLI (``python -m medusa_mlx.generate``); the
multi-rank launch it may start lives in ``distributed.py``.
"""

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Optional, Sequence, Union

import mlx.core as mx

from .acceptors import GreedyAcceptor
from .attention import compact_cache, tree_attention
from .conversation import encode_prompt
from .context import DrafterCache
from .draft import draft_step, drafting_plan
from .lookup import ROOT, PromptLookup, make_lookup
from .model import MedusaModel, as_medusa_model, is_context
from .tree import DynamicTree, TreeSpec, tree_for_model
from .errors import ContextLengthError  # noqa: F401  (raised here; importable from here)

# proposer(hidden (H,), history: prompt + tokens so far) -> token ids of shape
# (>= depth, >= topk): row d holds head d's guesses, best first.
Proposer = Callable[[mx.array, list], mx.array]


@dataclass
class StepTimings:
    """Seconds spent per phase. Phases other than ``total`` are only measured
    (with a device sync after each) when ``profile=True``."""

    total: float = 0.0
    heads: Optional[float] = None
    verify: Optional[float] = None
    accept: Optional[float] = None


@dataclass
class MedusaStep:
    tokens: list[int]  # emitted this step (accepted head tokens + bonus)
    accepted: int  # head-proposed tokens accepted (0 for the prefill step)
    tree_size: int  # nodes verified (0 for the prefill step)
    timings: StepTimings = field(default_factory=StepTimings)

    @property
    def is_prefill(self) -> bool:
        """The first step: one token from the prompt's logits, no tree verified.
        Decoding statistics (tokens per step, generation speed) leave it out."""
        return self.tree_size == 0


def _prefill(model: MedusaModel, prompt: mx.array, cache, step_size: int,
             drafter_cache: Optional[DrafterCache] = None):
    """Like mlx-lm: all but the last prompt token in chunks, then the last alone.
    A context drafter's cache also gets every position's feature."""
    while prompt.size > 1:
        n = min(step_size, prompt.size - 1)
        if drafter_cache is None:
            model.backbone(prompt[:n][None], cache=cache)
        else:
            drafter_cache.append(model.forward(prompt[:n][None], cache)[0][0], prompt[:n].tolist())
        mx.eval([c.state for c in cache])
        prompt = prompt[n:]
    hidden, logits = model.forward(prompt[None], cache)
    if drafter_cache is not None:
        drafter_cache.append(hidden[0], prompt.tolist())
    return hidden, logits


def medusa_generate_step(
    prompt: Union[mx.array, Sequence[int]],
    model: MedusaModel,
    *,
    max_tokens: int = 256,
    tree: TreeSpec = "auto",
    acceptor=None,
    proposer: Optional[Proposer] = None,
    prompt_cache: Optional[list] = None,
    eos_token_ids: Iterable[int] = (),
    prefill_step_size: int = 2048,
    profile: bool = False,
    on_step: Optional[Callable[[MedusaStep], None]] = None,
    lookup: Union[bool, PromptLookup, None] = None,
    drafter_cache: Optional[DrafterCache] = None,
) -> Generator[MedusaStep, None, None]:
    """Yield one MedusaStep per decoding step; at most ``max_tokens`` tokens in
    all, stopping right after the first EOS token. ``on_step`` sees each step
    before it is yielded (the distributed run checks the ranks agree there).
    ``tree="auto"`` uses the tree saved with the heads (see ``tree.saved_tree``).
    ``lookup``: True or a ``PromptLookup`` (kept across calls): also draft branches
    found in the text itself (``lookup.py``); with no heads, they are all there is.
    ``drafter_cache``: a context drafter's cache kept beside ``prompt_cache``
    (``model.make_drafter_cache()``), so a conversation's text stays in it."""
    heads = model.heads is not None or proposer is not None
    tree = tree_for_model(tree, model)
    drafter = make_lookup(lookup)
    acceptor = acceptor or GreedyAcceptor()
    prompt = mx.array(prompt) if not isinstance(prompt, mx.array) else prompt
    cache = prompt_cache if prompt_cache is not None else model.make_cache()
    context = model.context_length
    if prompt.size == 0:
        raise ValueError("the prompt is empty")
    if context is not None and cache[0].offset + prompt.size >= context:
        raise ContextLengthError(
            f"prompt of {cache[0].offset + prompt.size} tokens does not fit the "
            f"model's context of {context} tokens"
        )
    eos = set(eos_token_ids)
    if max_tokens == 0:
        return
    tic = time.perf_counter()
    continuing = cache[0].offset > 0  # the prompt extends a conversation in the cache
    contextual = is_context(model.heads) and proposer is None
    if isinstance(tree, DynamicTree) and not contextual:  # a proposer drafts static trees
        raise ValueError(f"tree '{tree.name}' is grown by the context drafter, not a proposer")
    if not contextual:  # Medusa heads or a proposer: no drafter cache to keep
        drafter_cache = None
    else:
        drafter_cache = drafter_cache if drafter_cache is not None else model.make_drafter_cache()
        drafter_cache.align(cache[0].offset)
    hidden, logits = _prefill(model, prompt, cache, prefill_step_size, drafter_cache)
    root = acceptor.first_token(logits[0, -1])
    last_hidden = hidden[0, -1]
    history = list(prompt.tolist()) + [root]
    if drafter is not None:
        drafter.begin(history, continuing)
    emitted = 1
    step = MedusaStep([root], 0, 0, StepTimings(total=time.perf_counter() - tic))
    if on_step is not None:
        on_step(step)
    yield step

    plan = drafting_plan(model, tree, proposer)
    while root not in eos and emitted != max_tokens:
        if context is not None and cache[0].offset + tree.depth + 2 > context:
            return
        timings = StepTimings()
        tic = time.perf_counter()
        # Lookup's branches alone may be worth more this step than the heads' tree.
        base = ROOT if drafter is not None and heads and drafter.skip_base(tree.size) else tree
        if base.size == 1:
            candidates = mx.array([root])
        else:  # a dynamic tree comes back grown for this step
            base, candidates = draft_step(model, base, plan, root, last_hidden, history, proposer,
                                          drafter_cache)
        step_tree, merged = base, None
        if drafter is not None:
            room = None if context is None else context - cache[0].offset - 2
            merged = drafter.draft(base, candidates.tolist(), room)
        if merged is not None:
            step_tree, candidates = merged.tree, mx.array(merged.tokens)
        if profile:
            mx.eval(candidates)
            timings.heads = time.perf_counter() - tic
        prefix_len = cache[0].offset
        if step_tree.is_chain:
            # A chain is an ordinary causal continuation: mlx-lm's own mask and
            # sequential RoPE offsets are exactly right, and cheaper.
            hidden, logits = model.forward(candidates[None], cache)
        else:
            with tree_attention(model.position_slots, cache, mx.array(step_tree.mask),
                                mx.array(step_tree.depths)):
                hidden, logits = model.forward(candidates[None], cache)
        if profile:
            mx.eval(hidden, logits)
            timings.verify = time.perf_counter() - tic - timings.heads
        result = acceptor.accept(step_tree, candidates, logits[0])
        tokens = _path_tokens(candidates, result.nodes) + [result.bonus]
        tokens = _truncate(tokens, eos, max_tokens - emitted)
        # The cache must end up holding the root + every emitted token but the last.
        compact_cache(cache, prefix_len, result.nodes[: len(tokens)])
        if drafter_cache is not None:  # the drafter learns the verified text: root + accepted
            drafter_cache.append(hidden[0, mx.array(result.nodes[: len(tokens)])],
                                 [root] + tokens[:-1])
        last_hidden = hidden[0, result.nodes[len(tokens) - 1]]
        root = tokens[-1]
        history.extend(tokens)
        if drafter is not None:
            drafter.observe(merged, result.nodes, base.size, tokens)
        emitted += len(tokens)
        if profile:
            # compact_cache() only records lazy copies; without this eval they would be
            # billed to the next step's verify forward instead of to this phase.
            mx.eval(last_hidden, [(c.keys, c.values) for c in cache])
            timings.accept = time.perf_counter() - tic - timings.heads - timings.verify
        timings.total = time.perf_counter() - tic
        step = MedusaStep(tokens, result.accepted, step_tree.size, timings)
        if on_step is not None:
            on_step(step)
        yield step


def _path_tokens(candidates: mx.array, nodes: list[int]) -> list[int]:
    return candidates[mx.array(nodes[1:])].tolist() if len(nodes) > 1 else []


def _truncate(tokens: list[int], eos: set, budget: int) -> list[int]:
    if budget >= 0:  # a negative budget means no limit (max_tokens=-1)
        tokens = tokens[:budget]
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@dataclass
class MedusaResponse:
    """One decoding step, as ``stream_generate`` yields it."""

    text: str  # new text this step
    tokens: list[int]  # token ids emitted this step
    accepted: int  # head tokens accepted this step (tokens - 1 unless truncated)
    step: int  # 0 is the prefill step (one token from the prompt's logits)
    tree_size: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    mean_tokens_per_step: float  # over decoding steps so far (prefill excluded)
    peak_memory: float  # GB
    timings: StepTimings
    finish_reason: Optional[str] = None  # "stop", "length", "context" or None

    @property
    def token(self) -> int:
        return self.tokens[-1]


def stream_generate(
    model: MedusaModel,
    tokenizer,
    prompt: Union[str, Sequence[int], mx.array],
    max_tokens: int = 256,
    tree: TreeSpec = "auto",
    **kwargs,
) -> Generator[MedusaResponse, None, None]:
    """Like ``mlx_lm.stream_generate``, one response per step (several tokens; EOS
    ends, not in the text); ``model`` may be a plain mlx-lm model (``lookup=True``)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if not isinstance(tokenizer, TokenizerWrapper):
        tokenizer = TokenizerWrapper(tokenizer)
    model = as_medusa_model(model)
    prompt_ids = encode_prompt(tokenizer, prompt)
    eos = set(tokenizer.eos_token_ids)
    detokenizer = tokenizer.detokenizer
    steps = medusa_generate_step(
        prompt_ids, model, max_tokens=max_tokens, tree=tree, eos_token_ids=eos, **kwargs
    )
    tic = time.perf_counter()
    prompt_tps = 0.0
    n_tokens = n_decode_tokens = n_steps = 0
    previous = None
    for i, step in enumerate(steps):
        if step.is_prefill:
            prompt_tps = len(prompt_ids) / max(time.perf_counter() - tic, 1e-9)
            tic = time.perf_counter()
        else:
            n_steps += 1
            n_decode_tokens += len(step.tokens)
        n_tokens += len(step.tokens)
        for t in step.tokens:
            if t not in eos:
                detokenizer.add_token(t)
        if previous is not None:
            yield previous
        elapsed = max(time.perf_counter() - tic, 1e-9)
        previous = MedusaResponse(
            text=detokenizer.last_segment,
            tokens=step.tokens,
            accepted=step.accepted,
            step=i,
            tree_size=step.tree_size,
            prompt_tokens=len(prompt_ids),
            prompt_tps=prompt_tps,
            generation_tokens=n_tokens,
            generation_tps=n_decode_tokens / elapsed if n_steps else 0.0,
            mean_tokens_per_step=n_decode_tokens / n_steps if n_steps else 0.0,
            peak_memory=mx.get_peak_memory() / 1e9,
            timings=step.timings,
        )
    if previous is None:
        return
    detokenizer.finalize()
    previous.text += detokenizer.last_segment
    if previous.tokens[-1] in eos:
        previous.finish_reason = "stop"
    elif n_tokens == max_tokens:
        previous.finish_reason = "length"
    else:
        previous.finish_reason = "context"
    yield previous


def generate(model: MedusaModel, tokenizer, prompt, verbose: bool = False, **kwargs) -> str:
    """Return the whole generated text (see :func:`stream_generate`)."""
    text = ""
    response = None
    for response in stream_generate(model, tokenizer, prompt, **kwargs):
        if verbose:
            print(response.text, end="", flush=True)
        text += response.text
    if verbose and response is not None:
        print()
        print(
            f"Generation: {response.generation_tokens} tokens, "
            f"{response.generation_tps:.1f} tokens/s, "
            f"{response.mean_tokens_per_step:.2f} tokens/step"
        )
    return text


def configure_parser():
    import argparse

    from .cli import ArgumentParser, add_model_arguments

    parser = ArgumentParser(
        description="Generate text with Medusa speculative decoding (greedy: identical "
        "to plain mlx-lm greedy output).",
        epilog="examples:\n"
        "  python -m medusa_mlx.generate --model ../shared/data/stories260K.bin --prompt 'Once'\n"
        "  python -m medusa_mlx.generate --prompt 'What is the capital of France?'\n"
        "  python -m medusa_mlx.generate --model mlx-community/Qwen2.5-0.5B-Instruct-bf16 "
        "--medusa ./my-heads --tree tree-16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", default=None, help="prompt text (default: BOS only for base models)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--no-chat-template", action="store_true", help="send the prompt raw even if the tokenizer has a chat template")
    parser.add_argument("--accept", default=None, choices=["greedy", "typical", "lossless"], help="acceptance rule (default: greedy at --temp 0, else lossless)")
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    dist = parser.add_argument_group(
        "distributed (under mlx.launch: mlx.launch --backend ring -n 2 -- python -m medusa_mlx.generate ...)"
    )
    dist.add_argument("--shard", action="store_true", help="require a sharded run (automatic when mlx.launch starts more than one rank)")
    dist.add_argument("--step-timeout", type=float, default=300.0, help="abort a rank when no step completes in this many seconds, e.g. a peer hung (0: wait forever)")
    dist.add_argument("--check-every", type=int, default=16, help="check every N steps that all ranks emitted the same tokens")
    return parser


def main(argv=None):
    from .cli import run_cli

    run_cli(_main, argv)


def _main(argv):
    from .acceptors import make_acceptor
    from .distributed import agree_seed, lockstep, run_group, shard_model
    from .load import load

    args = configure_parser().parse_args(argv)
    group = run_group(args.shard)  # None: a plain single-process run
    with warnings.catch_warnings():
        if group is not None and group.rank() != 0:
            warnings.simplefilter("ignore")  # rank 0 speaks for every rank
        model, tokenizer = load(args.model, False if args.no_heads else args.medusa)
    if group is not None:
        model = shard_model(model, group)
        args.seed = agree_seed(args.seed, group)
    if args.prompt is None:
        prompt = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else tokenizer.encode("")
    else:
        prompt = encode_prompt(tokenizer, args.prompt, chat_template=not args.no_chat_template)
    accept = args.accept or ("lossless" if args.temp > 0 else "greedy")
    acceptor = make_acceptor(
        accept, temp=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, seed=args.seed
    )
    kwargs = dict(max_tokens=args.max_tokens, tree=args.tree, acceptor=acceptor,
                  lookup=args.lookup or args.no_heads)
    if group is None:
        generate(model, tokenizer, prompt, verbose=True, **kwargs)
        return
    with lockstep(group, args.check_every, args.step_timeout) as on_step:
        generate(model, tokenizer, prompt, verbose=group.rank() == 0, on_step=on_step, **kwargs)


if __name__ == "__main__":
    main()
