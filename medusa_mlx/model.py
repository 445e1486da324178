"""MedusaModel: an untouched mlx-lm backbone plus Medusa heads."""

from dataclasses import dataclass
from typing import Callable, Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .attention import make_tree_cache
from .backbone import (BackboneParts, BodyPath, hidden_and_logits, inspect_backbone, is_linear,
                       lm_head_weight, model_type, token_embedding)
from .context import ContextDrafter, DrafterCache
from .errors import ConfigError, UnsupportedModelError
from .heads import HeadsArgs, MedusaHeads, check_head_vocab, init_heads


@dataclass
class MedusaModel:
    """``backbone`` is the mlx-lm model as loaded; ``heads`` guess further tokens
    (None: no heads; decoding then drafts with prompt lookup alone, or not at all).

    ``body`` says where the backbone's inner model sits: ``forward`` records its
    output (the final hidden state the heads read) during the backbone's own call,
    so the logits are exactly plain decoding's (see ``backbone.py``).
    ``output_path`` maps a hidden state to logits through the backbone's own code.
    """

    backbone: nn.Module
    heads: Optional[Union[MedusaHeads, ContextDrafter]]  # Medusa heads or a context drafter
    body: BodyPath
    output_path: Callable[[mx.array], mx.array]
    position_slots: list  # (parent, key) of every rotary module / position table
    # Optional "head vocabulary" (config key ``head_vocab``): shared-projection heads
    # then score only these token ids, a slice of the output projection computed once
    # at load. On a small model with a large vocabulary the full projection costs ~1/5
    # of a forward per step; the heads' guesses only ever need likely tokens.
    head_vocab: Optional[mx.array] = None
    head_projection: Optional[Callable[[mx.array], mx.array]] = None
    # Token ids -> input embeddings, for sequential heads (they see tokens too).
    embed: Optional[Callable[[mx.array], mx.array]] = None

    @property
    def num_heads(self) -> int:
        return 0 if self.heads is None else self.heads.num_heads

    @property
    def context_length(self) -> Optional[int]:
        args = getattr(self.backbone, "args", None)
        return getattr(args, "max_position_embeddings", None)

    def make_cache(self):
        return make_tree_cache(self.backbone)

    def make_drafter_cache(self, start: int = 0) -> Optional[DrafterCache]:
        """The context drafter's own cache (None for other heads): keep it beside
        the backbone's cache to carry a conversation across calls."""
        return DrafterCache(start) if is_context(self.heads) else None

    def forward(self, tokens: mx.array, cache) -> tuple[mx.array, mx.array]:
        """tokens (1, T) -> (hidden (1, T, H), logits (1, T, V)), one backbone call."""
        return hidden_and_logits(self.backbone, self.body, tokens, cache)

    def head_logits(self, hidden: mx.array, count: Optional[int] = None,
                    next_token: Optional[mx.array] = None) -> mx.array:
        """hidden (..., H) -> (count, ..., V) logits of the first ``count`` heads
        (over ``head_vocab`` when the heads have one: map indices with it).
        ``next_token`` (...): the token after ``hidden``'s position, which
        sequential heads see (plain Medusa heads ignore it)."""
        projection = self.head_projection or self.output_path
        if not self.heads.args.sequential:
            return self.heads(hidden, projection, count)
        if next_token is None:
            raise ValueError("sequential heads see the next token: pass next_token")
        return self.heads(hidden, projection, count, self.embed, next_token[..., None],
                          self.head_vocab)


def is_context(heads) -> bool:
    """An EAGLE-style context drafter (``context.py``) rather than Medusa heads."""
    return isinstance(heads, ContextDrafter)


def medusa_model(backbone: nn.Module, heads: Optional[MedusaHeads]) -> MedusaModel:
    """``heads=None``: the backbone alone, for prompt lookup without heads."""
    return _assemble(backbone, heads, inspect_backbone(backbone))


def as_medusa_model(model) -> MedusaModel:
    """A MedusaModel as it is, or a plain mlx-lm model with no heads (checked
    like any backbone: unsupported architectures are refused)."""
    return model if isinstance(model, MedusaModel) else medusa_model(model, None)


def _assemble(backbone: nn.Module, heads: Optional[MedusaHeads],
              parts: BackboneParts) -> MedusaModel:
    slots, body, project, hidden, vocab = parts
    if heads is None:
        return MedusaModel(backbone, None, body, project, slots)
    if heads.args.hidden_size != hidden:
        raise ConfigError(
            f"heads expect hidden size {heads.args.hidden_size}, the backbone has {hidden}"
        )
    # Shared-projection heads (Medusa v2) may not record a vocabulary: they use the backbone's.
    shared_unknown = heads.args.shared_lm_head and heads.args.vocab_size is None
    if heads.args.vocab_size != vocab and not shared_unknown:
        raise ConfigError(f"heads predict {heads.args.vocab_size} tokens, the backbone {vocab}")
    head_vocab, head_projection = _head_vocab_projection(heads, project, hidden, vocab)
    embed = token_embedding(backbone, body, vocab)
    if is_context(heads) and embed is not None:
        # Compute in the backbone's dtype: a float16 drafter file on a float32 CPU
        # backbone would otherwise run float16 matmuls, which MLX's CPU does slowly.
        heads.set_dtype(embed(mx.array([0])).dtype)
    if (heads.args.sequential or is_context(heads)) and embed is None:
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' has no token embedding for sequential heads"
        )
    return MedusaModel(backbone, heads, body, project, slots, head_vocab, head_projection,
                       embed)


def _head_vocab_projection(heads: MedusaHeads, lm_head, hidden_size: int, vocab_size: int):
    ids = heads.args.extra.get("head_vocab")
    if not ids:
        return None, None
    if not heads.args.shared_lm_head:
        raise ConfigError("head_vocab is only supported for heads that share the backbone's "
                          "lm_head")
    check_head_vocab(ids, vocab_size)  # MLX does not bounds-check the gather below
    vocab = mx.array(ids)
    if not is_linear(lm_head, hidden_size):  # e.g. soft-capped: score all, keep the slice
        return vocab, lambda x: lm_head(x)[..., vocab]
    weight = lm_head_weight(lm_head, hidden_size)[vocab].T
    mx.eval(weight)
    return vocab, lambda x: x @ weight


def attach_heads(
    backbone: nn.Module,
    num_heads: int = 4,
    num_layers: int = 1,
    seed: int = 0,
    shared_lm_head: bool = False,
    sequential: bool = False,
) -> MedusaModel:
    """Fresh random heads on ``backbone`` (their guesses are mostly wrong, which
    exercises rejection; train them with ``medusa_mlx.train``)."""
    parts = inspect_backbone(backbone)
    args = HeadsArgs(parts.hidden_size, parts.vocab_size, num_heads, num_layers, shared_lm_head,
                     sequential)
    return _assemble(backbone, init_heads(args, seed=seed), parts)
