"""MedusaModel: an untouched mlx-lm backbone plus Medusa heads."""

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .attention import make_tree_cache
from .backbone import BackboneParts, inspect_backbone, lm_head_weight, model_type
from .errors import ConfigError, UnsupportedModelError
from .heads import HeadsArgs, MedusaHeads, check_head_vocab, init_heads


@dataclass
class MedusaModel:
    """``backbone`` is the mlx-lm model as loaded; ``heads`` guess further tokens
    (None: no heads; decoding then drafts with prompt lookup alone, or not at all).

    ``body`` (the backbone's inner model: tokens -> final-norm hidden states) and
    ``lm_head`` (hidden -> logits) are the two halves of ``backbone.__call__``;
    Medusa needs the hidden states in between to run its heads.
    """

    backbone: nn.Module
    heads: Optional[MedusaHeads]
    body: nn.Module
    lm_head: Callable[[mx.array], mx.array]
    rope_owners: list
    # Optional "head vocabulary" (config key ``head_vocab``): shared-projection heads
    # then score only these token ids, a slice of the lm_head computed once at load.
    # On a small model with a large vocabulary the full projection costs ~1/5 of a
    # forward per step; the heads' guesses only ever need likely tokens.
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

    def forward(self, tokens: mx.array, cache) -> tuple[mx.array, mx.array]:
        """tokens (1, T) -> (hidden (1, T, H), logits (1, T, V))."""
        hidden = self.body(tokens, cache=cache)
        return hidden, self.lm_head(hidden)

    def head_logits(self, hidden: mx.array, count: Optional[int] = None,
                    next_token: Optional[mx.array] = None) -> mx.array:
        """hidden (..., H) -> (count, ..., V) logits of the first ``count`` heads
        (over ``head_vocab`` when the heads have one: map indices with it).
        ``next_token`` (...): the token after ``hidden``'s position, which
        sequential heads see (plain Medusa heads ignore it)."""
        projection = self.head_projection or self.lm_head
        if not self.heads.args.sequential:
            return self.heads(hidden, projection, count)
        if next_token is None:
            raise ValueError("sequential heads see the next token: pass next_token")
        return self.heads(hidden, projection, count, self.embed, next_token[..., None],
                          self.head_vocab)


def medusa_model(backbone: nn.Module, heads: Optional[MedusaHeads]) -> MedusaModel:
    """``heads=None``: the backbone alone, for prompt lookup without heads."""
    return _assemble(backbone, heads, inspect_backbone(backbone))


def as_medusa_model(model) -> MedusaModel:
    """A MedusaModel as it is, or a plain mlx-lm model with no heads (checked
    like any backbone: unsupported architectures are refused)."""
    return model if isinstance(model, MedusaModel) else medusa_model(model, None)


def _assemble(backbone: nn.Module, heads: Optional[MedusaHeads],
              parts: BackboneParts) -> MedusaModel:
    owners, body, lm_head, hidden, vocab = parts
    if heads is None:
        return MedusaModel(backbone, None, body, lm_head, owners)
    if heads.args.hidden_size != hidden:
        raise ConfigError(
            f"heads expect hidden size {heads.args.hidden_size}, the backbone has {hidden}"
        )
    # Shared-projection heads (Medusa v2) may not record a vocabulary: they use the backbone's.
    shared_unknown = heads.args.shared_lm_head and heads.args.vocab_size is None
    if heads.args.vocab_size != vocab and not shared_unknown:
        raise ConfigError(f"heads predict {heads.args.vocab_size} tokens, the backbone {vocab}")
    head_vocab, head_projection = _head_vocab_projection(heads, lm_head, hidden, vocab)
    embed = getattr(body, "embed_tokens", None)
    if heads.args.sequential and embed is None:
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' has no embed_tokens for sequential heads"
        )
    return MedusaModel(backbone, heads, body, lm_head, owners, head_vocab, head_projection,
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
