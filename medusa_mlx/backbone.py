"""What Medusa needs from an mlx-lm backbone, and the checks that it has it.

Medusa runs the backbone in two halves (``split_backbone``: body -> final
hidden states, ``lm_head`` -> logits) so the heads can read the hidden states,
rotates each tree node by its own depth (``rope_owners``: the module holding
``rope`` in every layer) and drops rejected nodes from the KV cache
(``check_cache_types``). Each check refuses an unsupported architecture with one
line naming it, at load time, instead of decoding wrongly later.
"""

from typing import Callable, NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, make_prompt_cache

from .errors import UnsupportedModelError


def model_type(backbone: nn.Module) -> str:
    args = getattr(backbone, "args", None)
    return getattr(backbone, "model_type", None) or getattr(args, "model_type", None) or type(backbone).__module__


def check_cache_types(backbone: nn.Module) -> list:
    """mlx-lm's per-layer caches for ``backbone``, or a one-line refusal when a
    layer's cache cannot drop rejected tree nodes (rotating windows, recurrent
    state, hybrids)."""
    caches = make_prompt_cache(backbone)
    for c in caches:
        if type(c) is not KVCache:
            raise UnsupportedModelError(
                f"architecture '{model_type(backbone)}' is not supported: its layers use "
                f"{type(c).__name__}, which cannot drop rejected tree nodes "
                "(Medusa needs the plain trimmable KVCache in every layer)"
            )
    return caches


def rope_owners(backbone: nn.Module) -> list[nn.Module]:
    """The attention module of every layer (the one that owns ``rope``)."""
    owners = []
    for layer in backbone.layers:
        found = [m for _, m in layer.named_modules() if isinstance(m, nn.Module) and "rope" in m]
        if len(found) != 1:
            raise UnsupportedModelError(
                f"architecture '{model_type(backbone)}' is not supported: expected one "
                f"RoPE module per layer, found {len(found)} (tree verification needs "
                "per-node rotary positions)"
            )
        owners.append(found[0])
    return owners


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


class BackboneParts(NamedTuple):
    owners: list
    body: nn.Module
    lm_head: Callable
    hidden_size: int
    vocab_size: int


def inspect_backbone(backbone: nn.Module) -> BackboneParts:
    """Refuse unsupported backbones early and take them apart once."""
    check_cache_types(backbone)
    owners = rope_owners(backbone)
    body, lm_head = split_backbone(backbone)
    probe = body(mx.array([[1]]))
    return BackboneParts(owners, body, lm_head, probe.shape[-1], lm_head(probe).shape[-1])


def lm_head_weight(lm_head: Callable, hidden_size: int) -> mx.array:
    """(V, H) matrix of any projection, quantized or tied: lm_head(I) = W^T."""
    return lm_head(mx.eye(hidden_size)).T
