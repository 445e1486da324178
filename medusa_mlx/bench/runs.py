"""The benchmark's timed runs: plain mlx-lm greedy decoding, mlx-lm's draft-model
speculative decoding, Medusa with each tree and with oracle heads, in one
process, interleaved, with warm-up.

Per prompt the plain greedy baseline runs first (its output is the reference
every other method must reproduce token for token, and what the oracle
proposer replays); the other methods follow in an order that rotates from
prompt to prompt, so slow spells on a shared machine hit them all alike.
Headline tokens/s come from runs without device syncs; the per-step split
(heads / verify / accept + cache update) comes from separate ``profile=True``
runs, whose syncs would otherwise distort the headline.

The machine's verify-cost curve is measured in ``medusa_mlx.cost``.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx

from ..generate import StepTimings, medusa_generate_step
from ..lookup import PromptLookup
from ..model import MedusaModel, medusa_model
from ..tree import tree_for_model

DEFAULT_TREES = "chain-2,tree-8,tree-16,auto"


# ------------------------------------------------------------------- methods


@dataclass
class Run:
    """One generation. ``decode_s`` runs from the first token that was not
    part of the prefill round to the last token, as mlx-lm's generation_tps."""

    tokens: list[int]
    first_round: int  # tokens available when the clock for decode_s started
    decode_s: float
    total_s: float
    steps: int  # verification steps after the first round
    accepted: int  # speculative tokens accepted in those steps
    peak_memory: int
    timings: list[StepTimings] = field(default_factory=list)

    @property
    def decode_tokens(self) -> int:
        return len(self.tokens) - self.first_round

    @property
    def tokens_per_s(self) -> Optional[float]:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else None


@dataclass
class Method:
    name: str
    kind: str  # "baseline", "draft", "medusa", "oracle" or "lookup" (no heads)
    tree: Optional[str] = None
    tree_size: Optional[int] = None
    lookup: bool = False  # draft prompt-lookup branches too (lookup.py)
    # The verify-cost curve measured by this run, for the lookup budget (None: lookup's default).
    lookup_cost: Optional[dict] = None
    # Other heads on the same backbone (``--compare-heads``); None: the loaded model.
    model: Optional[MedusaModel] = None
    runs: list[Run] = field(default_factory=list)
    profiles: list[Run] = field(default_factory=list)
    equal: list[bool] = field(default_factory=list)


def run_baseline(backbone, prompt: list[int], max_tokens: int, eos: set) -> Run:
    """Plain mlx-lm greedy decoding (``generate_step`` with its default argmax)."""
    from mlx_lm.generate import generate_step

    tokens: list[int] = []
    tic = time.perf_counter()
    first = None
    for token, _ in generate_step(mx.array(prompt), backbone, max_tokens=max_tokens):
        tokens.append(int(token))
        if first is None:
            first = time.perf_counter()
        if tokens[-1] in eos:
            break
    end = time.perf_counter()
    return Run(tokens, 1, end - first, end - tic, len(tokens) - 1, 0, 0)


def run_draft(backbone, draft, prompt, max_tokens, eos, num_draft: int) -> Run:
    """mlx-lm's ``speculative_generate_step`` with a draft model (greedy)."""
    from mlx_lm.generate import speculative_generate_step

    tokens: list[int] = []
    tic = time.perf_counter()
    first = None
    first_round = 0
    steps = accepted = 0
    gen = speculative_generate_step(
        mx.array(prompt), backbone, draft, num_draft_tokens=num_draft, max_tokens=max_tokens
    )
    for token, _, from_draft in gen:
        tokens.append(int(token))
        if first is None:
            if not from_draft:  # the first verification round ends here
                first = time.perf_counter()
                first_round = len(tokens)
        elif from_draft:
            accepted += 1
        else:
            steps += 1
        if tokens[-1] in eos:
            break
    gen.close()
    end = time.perf_counter()
    first = first if first is not None else end
    return Run(tokens, first_round or len(tokens), end - first, end - tic, steps, accepted, 0)


def run_medusa(model, prompt, max_tokens, eos, tree, proposer=None, profile=False,
               lookup=False) -> Run:
    tokens: list[int] = []
    timings: list[StepTimings] = []
    steps = accepted = 0
    tic = time.perf_counter()
    first = None
    for step in medusa_generate_step(
        prompt, model, max_tokens=max_tokens, tree=tree, proposer=proposer,
        eos_token_ids=eos, profile=profile, lookup=lookup,
    ):
        tokens.extend(step.tokens)
        if step.is_prefill:
            first = time.perf_counter()
            continue
        steps += 1
        accepted += step.accepted
        timings.append(step.timings)
    end = time.perf_counter()
    return Run(tokens, 1, end - first, end - tic, steps, accepted, 0, timings)


def oracle_proposer(reference: list[int], vocab: int) -> Callable:
    """Heads that always guess right: rank 0 of head d is the greedy token
    d + 1 places after the root; lower ranks are wrong on purpose. Medusa with
    it is the best any heads could do with that tree on this machine."""

    def propose(hidden, history):
        rows = []
        for d in range(8):
            pos = len(history) + d
            true = reference[pos] if pos < len(reference) else 0
            rows.append([true] + [(true + r) % vocab for r in range(1, 10)])
        return mx.array(rows)

    return propose


def _timed(fn, *args, **kwargs) -> Run:
    mx.eval(mx.zeros(1))  # nothing pending from the previous method
    mx.reset_peak_memory()
    run = fn(*args, **kwargs)
    run.peak_memory = mx.get_peak_memory()
    return run


def tree_supported(name: str, model: MedusaModel) -> bool:
    """Probe instead of assuming (an unknown preset name is skipped, not fatal)."""
    try:
        tree_for_model(name, model)
    except (ValueError, TypeError, KeyError):
        return False
    return True


def make_methods(trees: list[str], model: MedusaModel, draft: bool, num_draft: int,
                 oracle_trees: list[str], lookup: bool = False,
                 compare: Optional[dict] = None) -> list[Method]:
    """``lookup``: also prompt lookup alone (no heads) and heads + lookup per tree;
    ``compare``: {label: (model with other heads on the same backbone, the trees
    to run it with)}."""
    methods = [Method("mlx-lm greedy", "baseline")]
    if draft:
        methods.append(Method(f"mlx-lm draft x{num_draft}", "draft"))
    if lookup:
        methods.append(Method("lookup (no heads)", "lookup", lookup=True))
    for name in trees:
        resolved = tree_for_model(name, model)
        methods.append(Method("medusa", "medusa", name, resolved.size - 1))
        if lookup:
            methods.append(Method("medusa+lookup", "medusa", name, resolved.size - 1, lookup=True))
    for label, (other, other_trees) in (compare or {}).items():
        for name in other_trees:
            resolved = tree_for_model(name, other)
            methods.append(Method(f"medusa [{label}]", "medusa", name, resolved.size - 1,
                                  model=other))
    for name in oracle_trees:
        resolved = tree_for_model(name, model)
        methods.append(Method("medusa oracle", "oracle", name, resolved.size - 1))
    return methods


def run_one(method: Method, model: MedusaModel, draft, prompt, reference, max_tokens, eos,
            num_draft: int, profile: bool = False) -> Run:
    if method.kind == "baseline":
        return _timed(run_baseline, model.backbone, prompt, max_tokens, eos)
    if method.kind == "draft":
        return _timed(run_draft, model.backbone, draft, prompt, max_tokens, eos, num_draft)
    if method.model is not None:
        model = method.model
    proposer = None
    if method.kind == "oracle":
        proposer = oracle_proposer(prompt + reference, model.heads.args.vocab_size)
    if method.kind == "lookup":
        model = medusa_model(model.backbone, None)  # no heads: the root and lookup branches only
    lookup = PromptLookup(verify_cost=method.lookup_cost) if method.lookup else False
    return _timed(run_medusa, model, prompt, max_tokens, eos, method.tree, proposer, profile,
                  lookup)


def run_methods(methods: list[Method], model, draft, prompts: list[list[int]], max_tokens: int,
                eos: set, num_draft: int, profile: bool, log=print) -> None:
    """Warm up every method once, then run each prompt through all of them."""
    warm = prompts[0]
    reference = run_one(methods[0], model, draft, warm, None, 16, eos, num_draft).tokens
    for method in methods[1:]:
        run_one(method, model, draft, warm, reference, 16, eos, num_draft)
    others = methods[1:]
    for i, prompt in enumerate(prompts):
        base = run_one(methods[0], model, draft, prompt, None, max_tokens, eos, num_draft)
        methods[0].runs.append(base)
        methods[0].equal.append(True)
        shift = i % len(others) if others else 0
        for method in others[shift:] + others[:shift]:
            run = run_one(method, model, draft, prompt, base.tokens, max_tokens, eos, num_draft)
            method.runs.append(run)
            method.equal.append(run.tokens == base.tokens)
        if profile:
            for method in others:
                if method.kind in ("medusa", "oracle", "lookup"):
                    method.profiles.append(
                        run_one(method, model, draft, prompt, base.tokens, max_tokens, eos,
                                num_draft, profile=True)
                    )
        log(f"prompt {i + 1}/{len(prompts)}: " + ", ".join(
            f"{_label(m)} {m.runs[-1].tokens_per_s or 0:.1f}" for m in methods) + " tok/s")


def _label(method: Method) -> str:
    return method.name if method.tree is None else f"{method.name} {method.tree}"
