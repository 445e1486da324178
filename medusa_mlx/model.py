"""MedusaModel: an untouched mlx-lm backbone plus Medusa heads."""

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import mlx.core as mx
import mlx.nn as nn

from .attention import UnsupportedModelError, make_tree_cache, model_type, rope_owners
from .heads import HeadsArgs, MedusaHeads, init_heads


@dataclass
class MedusaModel:
    """``backbone`` is the mlx-lm model as loaded; ``heads`` guess further tokens.

    ``body`` (the backbone's inner model: tokens -> final-norm hidden states) and
    ``lm_head`` (hidden -> logits) are the two halves of ``backbone.__call__``;
    Medusa needs the hidden states in between to run its heads.
    """

    backbone: nn.Module
    heads: MedusaHeads
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
        return self.heads.num_heads

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


def split_backbone(backbone: nn.Module) -> tuple[nn.Module, Callable]:
    """Find body and projection, and check that ``lm_head(body(x)) == backbone(x)``
    so that architectures which post-process logits (soft-capping, scaling) are
    refused instead of silently decoding differently."""
    body = getattr(backbone, "model", None)
    if not isinstance(body, nn.Module):
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' is not supported: no inner .model"
        )
    args = getattr(backbone, "args", None)
    tied = getattr(args, "tie_word_embeddings", not hasattr(backbone, "lm_head"))
    if "lm_head" in backbone and not tied:
        lm_head = backbone.lm_head
    elif hasattr(body, "embed_tokens"):
        lm_head = body.embed_tokens.as_linear
    else:
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' is not supported: no lm_head found"
        )
    probe = mx.array([[1, 2]])
    expected = backbone(probe)
    got = lm_head(body(probe))
    if expected.shape != got.shape or not mx.allclose(expected, got, atol=1e-4, rtol=1e-3):
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' is not supported: its logits are not "
            "a plain projection of the final hidden state"
        )
    return body, lm_head


class _BackboneParts(NamedTuple):
    owners: list
    body: nn.Module
    lm_head: Callable
    hidden_size: int
    vocab_size: int


def _inspect(backbone: nn.Module) -> _BackboneParts:
    """Refuse unsupported backbones early and take them apart once."""
    make_tree_cache(backbone)  # refuses rotating / recurrent caches
    owners = rope_owners(backbone)
    body, lm_head = split_backbone(backbone)
    probe = body(mx.array([[1]]))
    return _BackboneParts(owners, body, lm_head, probe.shape[-1], lm_head(probe).shape[-1])


def wrap(backbone: nn.Module, heads: MedusaHeads) -> MedusaModel:
    return _assemble(backbone, heads, _inspect(backbone))


def _assemble(backbone: nn.Module, heads: MedusaHeads, parts: _BackboneParts) -> MedusaModel:
    owners, body, lm_head, hidden, vocab = parts
    if heads.args.hidden_size != hidden:
        raise ValueError(
            f"heads expect hidden size {heads.args.hidden_size}, the backbone has {hidden}"
        )
    # Shared-projection heads (Medusa v2) may not record a vocabulary: they use the backbone's.
    shared_unknown = heads.args.shared_lm_head and heads.args.vocab_size is None
    if heads.args.vocab_size != vocab and not shared_unknown:
        raise ValueError(f"heads predict {heads.args.vocab_size} tokens, the backbone {vocab}")
    head_vocab, head_projection = _head_vocab_projection(heads, lm_head, hidden)
    embed = getattr(body, "embed_tokens", None)
    if heads.args.sequential and embed is None:
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' has no embed_tokens for sequential heads"
        )
    return MedusaModel(backbone, heads, body, lm_head, owners, head_vocab, head_projection,
                       embed)


def _head_vocab_projection(heads: MedusaHeads, lm_head, hidden_size: int):
    ids = heads.args.extra.get("head_vocab")
    if not ids:
        return None, None
    if not heads.args.shared_lm_head:
        raise ValueError("head_vocab is only supported for heads that share the backbone's lm_head")
    vocab = mx.array(ids)
    # lm_head(I) = W^T exactly, whatever the projection is (tied, untied, quantized).
    weight = lm_head(mx.eye(hidden_size))[:, vocab]
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
    parts = _inspect(backbone)
    args = HeadsArgs(parts.hidden_size, parts.vocab_size, num_heads, num_layers, shared_lm_head,
                     sequential)
    return _assemble(backbone, init_heads(args, seed=seed), parts)
