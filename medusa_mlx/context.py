"""Context drafter: an EAGLE-style head kind that reads the text, not only h_t.

Medusa heads see the last hidden state alone (sequential heads add the tokens
on their own path) and never look back at the text. The context drafter is one
decoder layer, shaped like a backbone layer, with its own KV cache over every
earlier position. Its input at position t is ``fuse([f_t ; e(x_{t+1})])``: the
backbone's feature at t (the inner model's output, the hidden state the heads
read) and the embedding of the token that followed. Its output ``g_t``
estimates ``f_{t+1}``, scored by the backbone's own output path (restricted to
the head vocabulary) for the token after that. Drafting is autoregressive over
depth: a node's output feature and its drafted token feed the next depth
(``draft.context_candidates``, batched over the tree's nodes per depth).

Cache (:class:`DrafterCache`): the backbone's features and tokens per position
and the drafter layer's keys/values. Between decoding steps the backbone cache
holds x_0..x_{n-1}; the drafter holds features f_start..f_{n-1} and keys/values
for the entries whose next token it already knows. ``catch_up`` adds the
missing entries (the accepted path's, found by verification, and the root's)
from true features only, so the cache after any acceptance equals a
from-scratch pass over the same text. Tree nodes' entries are temporary: they
are dropped again after drafting.

Config: a heads folder whose ``config.json`` says ``"kind": "context"``
(same ``model.safetensors`` + ``config.json`` layout as Medusa heads;
``heads.save_heads`` writes both kinds).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from .errors import ConfigError
from .safe_files import MAX_HIDDEN, MAX_VOCAB, check_int, check_tensors, read_safetensors_header
from .tree import PRESETS, check_paths, dynamic_tree

KIND = "context"
MAX_DEPTH = 16


@dataclass
class DrafterArgs:
    hidden_size: int
    vocab_size: Optional[int]
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_depth: int = 5  # deepest tree drafted (autoregressive, so any depth works)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    extra: dict = field(default_factory=dict)
    # What readers of Medusa heads' args ask: a context drafter scores with the
    # backbone's own output path and walks the tree itself.
    shared_lm_head: bool = True
    sequential: bool = False

    @property
    def num_heads(self) -> int:
        return self.max_depth

    def to_config(self) -> dict:
        config = {
            "format": "medusa-mlx",
            "kind": KIND,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "max_depth": self.max_depth,
            "rope_theta": self.rope_theta,
            "norm_eps": self.norm_eps,
        }
        config.update(self.extra)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "DrafterArgs":
        check_config(config)
        known = {"format", "kind", "hidden_size", "vocab_size", "num_attention_heads",
                 "num_key_value_heads", "intermediate_size", "max_depth", "rope_theta",
                 "norm_eps"}
        return cls(config["hidden_size"], config.get("vocab_size"),
                   config["num_attention_heads"], config["num_key_value_heads"],
                   config["intermediate_size"], config.get("max_depth", 5),
                   float(config.get("rope_theta", 10000.0)), float(config.get("norm_eps", 1e-5)),
                   {k: v for k, v in config.items() if k not in known})


def check_config(config: dict) -> None:
    """Every value within its sane range before anything is allocated from it."""
    for key, low, high, optional in (("hidden_size", 1, MAX_HIDDEN, False),
                                     ("vocab_size", 1, MAX_VOCAB, True),
                                     ("num_attention_heads", 1, 256, False),
                                     ("num_key_value_heads", 1, 256, False),
                                     ("intermediate_size", 1, 16 * MAX_HIDDEN, False),
                                     ("max_depth", 1, MAX_DEPTH, True)):
        check_int(config, key, low, high, "context drafter", optional)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    if config["hidden_size"] % heads or heads % kv_heads:
        raise ConfigError(f"context drafter config: hidden_size {config['hidden_size']} must "
                          f"divide into {heads} attention heads, and those into {kv_heads} "
                          "key/value heads")
    for key in ("rope_theta", "norm_eps"):
        value = config.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
            raise ConfigError(f"context drafter config {key} is {value!r:.40}, expected a "
                              "positive number")
    if "tree" in config:
        try:
            if isinstance(config["tree"], str):  # a preset or "dynamic-N"
                if config["tree"] not in PRESETS and dynamic_tree(config["tree"], 1) is None:
                    raise ValueError(f"context drafter config tree {config['tree']!r:.40} is "
                                     "neither a preset nor dynamic-N")
            else:
                check_paths(config["tree"], "context drafter config tree")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    # head_vocab is checked where it is used (model._head_vocab_projection).


class ContextDrafter(nn.Module):
    """``fuse`` + one pre-norm decoder layer (GQA attention with RoPE, SwiGLU MLP)
    + a final RMSNorm, so its output is on the scale of the features it imitates."""

    kind = KIND

    def __init__(self, args: DrafterArgs):
        super().__init__()
        self.args = args
        H, heads, kv = args.hidden_size, args.num_attention_heads, args.num_key_value_heads
        self.head_dim = H // heads
        self.fuse = nn.Linear(2 * H, H, bias=False)
        self.attention_norm = nn.RMSNorm(H, eps=args.norm_eps)
        self.q_proj = nn.Linear(H, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, H, bias=False)
        self.mlp_norm = nn.RMSNorm(H, eps=args.norm_eps)
        self.gate_proj = nn.Linear(H, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(H, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, H, bias=False)
        self.norm = nn.RMSNorm(H, eps=args.norm_eps)

    @property
    def num_heads(self) -> int:
        return self.args.max_depth

    def _rotate(self, x: mx.array, positions) -> mx.array:
        """(B, heads, T, D) at ``positions``: an int (the first of T consecutive
        ones) or an array of T positions (one per tree node: the same
        (T, heads, 1, D) view the backbone's rotary modules get)."""
        rope = lambda y, offset: mx.fast.rope(y, self.head_dim, traditional=False,  # noqa: E731
                                              base=self.args.rope_theta, scale=1.0,
                                              offset=offset)
        if isinstance(positions, int):
            return rope(x, positions)
        return rope(x.swapaxes(0, 2), positions).swapaxes(0, 2)

    def attention_inputs(self, features: mx.array, embeddings: mx.array, positions=0):
        """-> (residual x, queries, keys, values), rotated, (B, heads, T, D)."""
        B, T, _ = features.shape
        x = self.fuse(mx.concatenate([features, embeddings.astype(features.dtype)], axis=-1))
        h = self.attention_norm(x)
        heads, kv = self.args.num_attention_heads, self.args.num_key_value_heads
        q = self.q_proj(h).reshape(B, T, heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(h).reshape(B, T, kv, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(h).reshape(B, T, kv, -1).transpose(0, 2, 1, 3)
        return x, self._rotate(q, positions), self._rotate(k, positions), v

    def attend(self, x: mx.array, q: mx.array, k: mx.array, v: mx.array, mask) -> mx.array:
        """Attention over (k, v) under ``mask``, then the MLP: the output features."""
        B, _, T, _ = q.shape
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5,
                                                   mask=mask)
        x = x + self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))
        h = self.mlp_norm(x)
        x = x + self.down_proj(nn.silu(self.gate_proj(h)) * self.up_proj(h))
        return self.norm(x)

    def __call__(self, features: mx.array, embeddings: mx.array,
                 cache: Optional[KVCache] = None, positions=0,
                 mask=None) -> mx.array:
        """features, embeddings (B, T, H) -> predicted next features (B, T, H).
        ``cache``: the drafter's own KVCache (extended by T entries). ``mask``:
        None for causal attention over the cache and the T new entries, or a
        (T, cached + T) boolean array."""
        x, q, k, v = self.attention_inputs(features, embeddings, positions)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        if mask is None:
            mask = "causal" if q.shape[2] > 1 else None
        return self.attend(x, q, k, v, mask)


def init_drafter(args: DrafterArgs, seed: int = 0) -> ContextDrafter:
    mx.random.seed(seed)
    drafter = ContextDrafter(args)
    mx.eval(drafter.parameters())
    return drafter


def drafter_args_for(hidden_size: int, vocab_size: int, backbone_args=None,
                     **overrides) -> DrafterArgs:
    """A drafter shaped like a backbone layer: heads, key/value heads, MLP width and
    RoPE base from the backbone's args where it has them."""
    def get(*names, default=None):
        return next((v for v in (getattr(backbone_args, n, None) for n in names) if v), default)

    heads = get("num_attention_heads", "n_head", "n_heads", default=max(1, hidden_size // 64))
    kv_heads = get("num_key_value_heads", "n_kv_heads", "n_head_kv", default=heads)
    if hidden_size % heads or heads % kv_heads:  # e.g. an explicit head_dim: heads of 64
        heads = max(h for h in range(1, max(1, hidden_size // 64) + 1) if hidden_size % h == 0)
        kv_heads = heads
    fields = dict(num_attention_heads=heads,
                  num_key_value_heads=kv_heads,
                  intermediate_size=get("intermediate_size", default=4 * hidden_size),
                  rope_theta=float(get("rope_theta", default=10000.0)))
    fields.update(overrides)
    return DrafterArgs(hidden_size, vocab_size, **fields)


class DrafterCache:
    """What the drafter knows of the text: the backbone's features and tokens at
    positions ``start .. end - 1`` and its own keys/values for the first
    ``kv.offset`` of them (entry t pairs f_t with x_{t+1}). Not on the model:
    one per conversation, beside the backbone's cache."""

    def __init__(self, start: int = 0):
        self.start = start
        self.kv = KVCache()
        self.features: Optional[mx.array] = None  # (end - start, H)
        self.tokens: list[int] = []

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def append(self, features: mx.array, tokens: list[int]) -> None:
        """The backbone's features (T, H) at the next T positions, and their tokens."""
        self.features = features if self.features is None else mx.concatenate(
            [self.features, features])
        self.tokens.extend(tokens)

    def trim_to(self, n: int) -> None:
        """Keep positions < n (a conversation cache trimmed to n tokens). Entries
        pair f_t with x_{t+1}, so only those with t + 1 < n stay valid."""
        if n <= self.start or self.features is None:  # nothing of the kept text known
            self.__init__(n)
            return
        keep = n - self.start
        self.tokens = self.tokens[:keep]
        self.features = self.features[:keep]
        self.kv.trim(max(self.kv.offset - max(keep - 1, 0), 0))

    def align(self, n: int) -> None:
        """At the start of a generation whose backbone cache holds n tokens: drop
        what the backbone no longer holds; a cache that knows less (made after
        the text was cached) starts at n."""
        if self.end > n:
            self.trim_to(n)
        elif self.end < n:
            self.__init__(n)

    def catch_up(self, drafter: ContextDrafter, embed: Callable, root: int) -> mx.array:
        """Add every missing entry, the last one pairing f_{end-1} with ``root``
        (the token emitted last); returns that entry's output (H,), the estimate
        of the root's feature (its tokens are the depth-1 guesses)."""
        first = self.start + self.kv.offset
        features = self.features[first - self.start:]
        nxt = self.tokens[first - self.start + 1:] + [root]
        out = drafter(features[None], embed(mx.array(nxt))[None], self.kv, positions=first)
        return out[0, -1]


def load_drafter(config: dict, weights: Path) -> ContextDrafter:
    """A drafter from its checked config and weights file (``heads.load_heads``
    reads the config and dispatches here on ``"kind": "context"``)."""
    drafter = ContextDrafter(DrafterArgs.from_config(config))
    check_tensors(weights, read_safetensors_header(weights), drafter)
    drafter.load_weights(str(weights), strict=True)
    mx.eval(drafter.parameters())
    return drafter
