"""Prompt lookup: draft tree branches from the text itself, no heads needed.

When an answer copies from its input (summaries, extraction, quotes, edits,
multi-turn answers that repeat earlier text) or repeats itself (small models
at greedy decoding loop), the continuation is already in the tokens seen so
far. :class:`PromptLookup` matches the last n tokens (largest n first, down to
``min_n``) against the prompt, the conversation and the answer so far (and,
with ``keep_past``, earlier generations of the same drafter) and proposes what
followed each match as tree branches (prompt lookup decoding, Saxena 2023;
Spec-Bench's "PLD").

- **Incremental index** (:class:`NgramIndex`): every n-gram (min_n..max_n) of
  the history maps to the positions it ends at, updated only for the tokens
  each step adds, so a step costs O(new tokens x n-range) whatever the length of
  the history (``scripts/bench_lookup_cost.py``: 0.4-0.9 ms a step for 1k to
  100k tokens of history, pure Python, on the loaded 2-core box).
- **Merging** (:meth:`PromptLookup.merge`): the branches are inserted into the
  step's base tree (the heads' tree, or the root alone without heads) as a
  token trie: a lookup token equal to a heads' node shares that node, only new
  tokens add nodes, and one verification checks everything.
- **Budget**: each new node j carries P(j accepted), estimated from what was
  accepted before (per n: the first token's rate and the rate of each further
  token given the previous one). E[tokens per step] is the sum of the
  accepted-probabilities of the nodes, and verifying k tokens costs
  ``verify_cost[k]`` plain steps, so the nodes kept are the most likely m, with
  m maximising (1 + E[base] + sum of their P) / cost(base nodes + m). A long
  branch is cut where its next tokens no longer pay for their verification;
  with no reliable match nothing is added and the step is a plain one.

The draft depends only on tokens already emitted, never on the step's own
random draws, so lossless sampling stays exact with lookup branches.
"""

import bisect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .tree import Tree, tree_from_parents

ROOT = tree_from_parents([-1], "root")  # the step's tree when nothing else is verified

# Verify cost of k tokens relative to one (one forward, 200 tokens cached), as
# measured by ``medusa-bench`` on SmolLM2-135M, 2-core x86_64, OpenBLAS (README).
# A CPU curve is steep; pass the curve of your machine (cost.verify_cost_curve)
# where verification is cheaper (Apple GPUs), or lookup will propose too little.
CPU_VERIFY_COST = {1: 1.00, 2: 1.08, 4: 1.24, 8: 1.43, 16: 1.79, 32: 2.67, 64: 4.44}


class NgramIndex:
    """Where each n-gram (``min_n`` <= n <= ``max_n``) of a growing token list ends.

    The list holds documents one after another; n-grams never span two, so
    an earlier generation cannot match into the next one. Only the tokens
    appended since the last call are indexed (n-range dictionary inserts each).
    """

    def __init__(self, min_n: int, max_n: int):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.doc_start = 0  # where the current document begins
        self.doc_ends: list[int] = []  # ends of earlier documents (exclusive)
        self.ends: dict[tuple, list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        toks = self.tokens
        for t in tokens:
            toks.append(int(t))
            i = len(toks) - 1
            for n in range(self.min_n, min(self.max_n, i + 1 - self.doc_start) + 1):
                self.ends.setdefault(tuple(toks[i - n + 1 : i + 1]), []).append(i)

    def new_document(self) -> None:
        if len(self.tokens) > self.doc_start:
            self.doc_ends.append(len(self.tokens))
            self.doc_start = len(self.tokens)

    def clear(self) -> None:
        self.tokens.clear()
        self.ends.clear()
        self.doc_ends.clear()
        self.doc_start = 0

    def continuation(self, end: int, length: int) -> list[int]:
        """Up to ``length`` tokens after position ``end``. In the current
        document a match ``P`` tokens before the tail continues periodically past
        the tail (a text repeating with period P keeps repeating): that is what
        turns a model's loop into long branches."""
        toks = self.tokens
        if end >= self.doc_start:
            period = len(toks) - 1 - end
            return [toks[end + 1 + j % period] for j in range(length)] if period > 0 else []
        stop = self.doc_ends[bisect.bisect_right(self.doc_ends, end)]
        return toks[end + 1 : min(stop, end + 1 + length)]


@dataclass
class Branch:
    tokens: list[int]
    n: int  # length of the n-gram it was found with
    nodes: list[int] = field(default_factory=list)  # its kept nodes in the merged tree


@dataclass
class MergedTree:
    tree: Tree
    tokens: list[int]  # every node's token, root first
    branches: list[Branch]  # with their node indices in ``tree``
    added: int  # nodes lookup added to the base tree


class PromptLookup:
    """The prompt-lookup drafter of one generation, or of a conversation.

    ``stream_generate(..., lookup=True)`` makes a fresh one per call; keep one
    yourself (``lookup=PromptLookup(...)``) to carry the conversation, earlier
    answers (``keep_past=True``) and the learned acceptance rates across calls.

    - ``min_n`` / ``max_n``: n-gram lengths matched, largest first.
    - ``max_branches``: distinct continuations proposed per step.
    - ``max_len``: longest continuation looked at (the budget usually cuts it).
    - ``verify_cost``: ``{k: cost of verifying k tokens / one token}``.
    - ``prior``: (first-token rate, next-token rate, weight in steps) per n
      before anything is observed; rates then follow acceptance with
      ``decay`` per observation (recent text matters more). ``base_prior``:
      the same for the tokens the heads' tree adds per step.
    """

    def __init__(self, min_n: int = 2, max_n: int = 5, max_branches: int = 3, max_len: int = 16,
                 max_nodes: int = 32, verify_cost: Optional[dict] = None,
                 keep_past: bool = False, max_past_tokens: int = 1 << 20,
                 prior: tuple = (0.3, 0.6, 4.0), base_prior: tuple = (0.5, 4.0),
                 decay: float = 0.98, scan: int = 8):
        self.index = NgramIndex(min_n, max_n)
        self.max_branches, self.max_len, self.max_nodes = max_branches, max_len, max_nodes
        self.keep_past, self.max_past_tokens = keep_past, max_past_tokens
        self.scan, self.decay = scan, decay
        curve = verify_cost or CPU_VERIFY_COST
        sizes = sorted(curve)
        # More tokens never cost less: smooth what timing noise is left.
        costs = np.maximum.accumulate([curve[k] for k in sizes])
        # Relative cost of k tokens for k = 0 .. max, interpolated (k = 0 unused).
        self._cost = np.interp(np.arange(max_nodes + 256), sizes, costs)
        first, later, weight = prior
        span = max_n - min_n + 1
        # Decayed (accepted, tried) counts per n: first token, and each later token.
        self._first = np.tile([first * weight, weight], (span, 1)).astype(np.float64)
        self._later = np.tile([later * weight, weight], (span, 1)).astype(np.float64)
        # Decayed (base-tree tokens accepted, steps), from ``base_prior``
        # (tokens a step, weight): the shipped SmolLM2 heads add 0.69 with tree-8.
        self._base = [base_prior[0] * base_prior[1], base_prior[1]]

    # ------------------------------------------------------------- history

    def begin(self, prompt: Sequence[int], continuing: bool = False) -> None:
        """Start a generation from ``prompt``. ``continuing``: the prompt extends
        the previous generation's text (a reused KV cache, a next chat turn)."""
        if not continuing:
            self.index.new_document()
            if not self.keep_past or len(self.index) > self.max_past_tokens:
                self.index.clear()
        self.index.extend(prompt)

    def extend(self, tokens: Sequence[int]) -> None:
        self.index.extend(tokens)

    # ------------------------------------------------------------ proposals

    def rates(self, n: int) -> tuple[float, float]:
        f, later = self._first[n - self.index.min_n], self._later[n - self.index.min_n]
        return f[0] / f[1], later[0] / later[1]

    def propose(self) -> list[Branch]:
        """Distinct continuations of the current tail, longest n-gram first,
        most recent match first within an n."""
        index, toks = self.index, self.index.tokens
        branches, seen = [], set()
        for n in range(min(index.max_n, len(toks) - index.doc_start), index.min_n - 1, -1):
            ends = index.ends.get(tuple(toks[len(toks) - n :]), ())
            for end in reversed(ends[-self.scan - 1 :]):
                cont = index.continuation(end, self.max_len)
                if cont and tuple(cont) not in seen:
                    seen.add(tuple(cont))
                    branches.append(Branch(cont, n))
                    if len(branches) == self.max_branches:
                        return branches
        return branches

    def draft(self, base: Tree, base_tokens: Sequence[int],
              room: Optional[int] = None) -> Optional[MergedTree]:
        """This step's tree: ``base`` merged with the branches found, or None
        when lookup adds nothing or the tree would be deeper than ``room``
        (the positions left in the model's context)."""
        merged = self.merge(base, base_tokens, self.propose())
        if merged.added == 0 or (room is not None and merged.tree.depth > room):
            return None
        return merged

    def merge(self, base: Tree, base_tokens: Sequence[int], branches: list[Branch]) -> MergedTree:
        """Insert ``branches`` into ``base`` (tokens ``base_tokens``, root first)
        and keep the new nodes that pay for their verification (see module doc)."""
        parents, tokens = list(base.parents.tolist()), list(base_tokens)
        pending, walks = self._pending(parents, tokens, branches)
        kept = self._budget(base.size, pending)
        if not kept:
            for b in branches:
                b.nodes = []
            return MergedTree(base, list(base_tokens), branches, 0)
        final = {j: j for j in range(len(parents))}
        for j in sorted(kept):  # creation order: parents before children
            node, t, _ = pending[j]
            final[j] = len(parents)
            parents.append(final[node])
            tokens.append(t)
        for b, walk in zip(branches, walks):
            b.nodes = []
            for node in walk:
                if node not in final:
                    break
                b.nodes.append(final[node])
        return MergedTree(tree_from_parents(parents, "lookup"), tokens, branches, len(kept))

    def _pending(self, parents: list, tokens: list, branches: list[Branch]):
        """The branches as a token trie below the base tree (``parents``,
        ``tokens``): new nodes ``{id: [parent id, token, P(accepted)]}`` (ids
        after the base's) and each branch's walk of node ids."""
        child = {}
        for j in range(1, len(parents)):
            child.setdefault((parents[j], tokens[j]), j)
        pending: dict[int, list] = {}
        walks = []
        for b in branches:
            first, later = self.rates(b.n)
            node, p, walk = 0, 1.0, []
            for k, t in enumerate(b.tokens):
                p *= first if k == 0 else later
                key = (node, t)
                if key not in child:
                    child[key] = len(parents) + len(pending)
                    pending[child[key]] = [node, t, p]
                node = child[key]
                if node in pending:
                    pending[node][2] = max(pending[node][2], p)
                walk.append(node)
            walks.append(walk)
        return pending, walks

    def _best(self, base_size: int, probs: Sequence[float], base_expected: float):
        """(m, expected tokens per step / relative cost) for the best m of the
        ``probs`` (sorted, most likely first) added to a base tree."""
        gains = np.cumsum([0.0] + list(probs[: self.max_nodes]))
        value = (1.0 + base_expected + gains) / self._cost[base_size : base_size + len(gains)]
        m = int(np.argmax(value))
        return m, float(value[m])

    def _budget(self, base_size: int, pending: dict) -> set:
        if not pending:
            return set()
        order = sorted(pending, key=lambda j: (-pending[j][2], j))
        m, _ = self._best(base_size, [pending[j][2] for j in order], self.base_expected)
        # A prefix of ``order``: a kept node's parent is kept too, since a
        # parent's P is never below its child's and ties keep creation order.
        return set(order[:m])

    @property
    def base_expected(self) -> float:
        """Tokens the base tree (the heads' nodes) is expected to add per step."""
        return self._base[0] / self._base[1]

    def skip_base(self, base_size: int) -> bool:
        """True when this step's lookup branches verified with the root alone
        are expected to beat the base tree of ``base_size`` nodes with them
        (then the heads need not even run). The base side is scored as if no
        lookup token were shared with the heads' nodes: under-rated, never over."""
        branches = self.propose() if base_size > 1 else []
        if not branches:
            return False
        pending, _ = self._pending([-1], [None], branches)
        probs = sorted((p for _, _, p in pending.values()), reverse=True)
        return self._best(1, probs, 0.0)[1] > self._best(base_size, probs, self.base_expected)[1]

    # ------------------------------------------------------------ learning

    def observe(self, merged: Optional[MergedTree], accepted_nodes: Sequence[int],
                base_size: int, emitted: Sequence[int] = ()) -> None:
        """Learn from one verification's accepted path (``merged`` None: the
        step verified the base tree alone) and add the ``emitted`` tokens."""
        self.index.extend(emitted)
        accepted = set(accepted_nodes)
        if base_size > 1:  # the heads ran this step
            hits = sum(1 for j in accepted if 0 < j < base_size)
            self._base = [self._base[0] * self.decay + hits, self._base[1] * self.decay + 1]
        for b in merged.branches if merged is not None else ():
            i = b.n - self.index.min_n
            for k, node in enumerate(b.nodes):
                counts = self._first[i] if k == 0 else self._later[i]
                hit = node in accepted
                counts *= self.decay
                counts += (float(hit), 1.0)
                if not hit:
                    break


def make_lookup(lookup) -> Optional[PromptLookup]:
    """``lookup=`` of ``stream_generate``: False/None, True (a fresh default
    drafter) or a :class:`PromptLookup` the caller keeps."""
    if lookup is None or lookup is False:
        return None
    if lookup is True:
        return PromptLookup()
    if isinstance(lookup, PromptLookup):
        return lookup
    raise TypeError(f"lookup must be a bool or a PromptLookup, got {type(lookup).__name__}")
