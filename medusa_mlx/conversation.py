"""Prompts into token ids, and a conversation's KV cache reused across calls.

The chat, the server, the benchmark and training all turn prompts (text, token
ids or chat messages) into ids the same way, and the chat and the server keep a
conversation's cache between turns so that each turn reads only its new tokens
(a 10-turn SmolLM2 chat otherwise re-reads every earlier turn each time).
"""

import mlx.core as mx
from mlx_lm.models.cache import trim_prompt_cache
from mlx_lm.utils import common_prefix_len


def encode_prompt(tokenizer, prompt, chat_template: bool = False) -> list[int]:
    """Token ids of ``prompt``: ids pass through; chat messages go through the chat
    template (without one: their contents joined), text too when ``chat_template``
    and the tokenizer has one (as a user's message), else it is encoded as written,
    with BOS added unless the text already starts with it (as mlx-lm does)."""
    if isinstance(prompt, mx.array):
        return prompt.tolist()
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str) and chat_template and has_template:
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, str):
        prompt = list(prompt)
        if not prompt or not isinstance(prompt[0], dict):
            return prompt
        if has_template:
            return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True))
        text = ""  # no template (base models): one running text for the model to continue
        for part in (m["content"] for m in prompt):
            text += (" " if text[-1:].strip() and part[:1].strip() else "") + part
        prompt = text
    add_special = tokenizer.bos_token is None or not prompt.startswith(tokenizer.bos_token)
    return list(tokenizer.encode(prompt, add_special_tokens=add_special))


class ConversationCache:
    """A KV cache and the ids it holds, reused across calls (chat, server); after
    generating, ``keep(prompt + answer[:-1])`` trims any excess: between decoding
    steps a cache holds every token but the last one emitted (see generate.py).

    ``drafter``: a context drafter's ``DrafterCache`` (``model.make_drafter_cache()``,
    None for other heads), trimmed with the KV cache so that the drafter's keys and
    values stay those of a from-scratch pass over the kept text."""

    def __init__(self, cache: list, drafter=None):
        self.cache, self.tokens, self.drafter = cache, [], drafter

    def reuse(self, prompt: list[int]) -> int:
        """Keep the prefix shared with ``prompt`` but its last token; feed the rest."""
        self.keep(prompt[: min(common_prefix_len(self.tokens, prompt), len(prompt) - 1)])
        return len(self.tokens)

    def keep(self, tokens: list[int]) -> None:
        """From now on the cache holds ``tokens`` (a prefix of what it holds)."""
        self.tokens = list(tokens)
        trim_prompt_cache(self.cache, max(self.cache[0].offset - len(self.tokens), 0))
        if self.drafter is not None:
            self.drafter.trim_to(len(self.tokens))
