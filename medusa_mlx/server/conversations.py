"""The server's conversation caches: a small LRU pool of ``ConversationCache``s.

A request takes the idle cache sharing the longest prefix with its prompt (a
conversation that continues finds its own, with every earlier turn in it) and
gives it back when done, so only the new tokens of each turn are read. Caches in
use are not in the pool: the worker bounds how many requests run at once, and
``size`` bounds how many idle ones are kept (memory stays flat under load).
"""

from typing import Callable, Optional

from mlx_lm.utils import common_prefix_len

from ..errors import UsageError
from ..conversation import ConversationCache


class ConversationPool:
    def __init__(self, make_cache: Callable[[], list], size: int = 10,
                 make_drafter_cache: Callable[[], object] = lambda: None):
        if size < 0:
            raise UsageError(f"--prompt-cache-size must be >= 0, got {size}")
        self.make_cache = make_cache
        self.make_drafter_cache = make_drafter_cache  # a context drafter's, else None
        self.size = size
        self.idle: list[ConversationCache] = []  # least recently used first

    def take(self, prompt: list[int]) -> ConversationCache:
        """The idle cache sharing the longest prefix with ``prompt``, else a new one."""
        best: Optional[ConversationCache] = None
        best_len = 0
        for entry in self.idle:
            n = common_prefix_len(entry.tokens, prompt)
            if n > best_len:
                best, best_len = entry, n
        if best is None:
            return ConversationCache(self.make_cache(), self.make_drafter_cache())
        self.idle.remove(best)
        return best

    def give_back(self, entry: ConversationCache) -> None:
        self.idle.append(entry)
        del self.idle[: max(0, len(self.idle) - self.size)]
