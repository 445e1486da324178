"""Tree attention on unmodified mlx-lm models, through the hooks mlx-lm exposes.

Three pieces, none of which touches a model file:

- ``TreeKVCache``: mlx-lm's ``KVCache`` whose ``make_mask`` hands every layer the
  tree mask (whole prefix + the node's own ancestors) while a tree is verified.
  mlx-lm models build their mask with ``create_attention_mask(h, cache)``,
  which defers to ``cache.make_mask``.
- ``tree_positions``: for the length of one forward, wraps every rotary module
  (``backbone.position_slots``: any attribute name, any mlx-lm rotary class) so node
  j is rotated to ``prefix_len + depth_j`` instead of ``prefix_len + j`` (learned
  position tables, GPT-2's ``wpe``, are looked up at those positions instead). ``mx.fast.rope`` takes one offset per batch row, so the
  wrapper views (1, H, T, D) as (T, H, 1, D) and passes T offsets. The
  original modules are put back on exit.
- ``compact_cache``: after acceptance, moves the accepted nodes' keys/values to the
  slots right after the prefix and drops the rest.
"""

import inspect
from contextlib import contextmanager
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, make_prompt_cache

from .errors import UnsupportedModelError  # noqa: F401  (its old import path, kept by #16)



class TreeKVCache(KVCache):
    """A ``KVCache`` that can serve a tree mask for the next forward.

    ``tree_mask`` and ``tree_depths`` are set only inside :func:`tree_attention`;
    outside it the cache is indistinguishable from mlx-lm's ``KVCache``.
    """

    def __init__(self):
        super().__init__()
        self.tree_mask: Optional[mx.array] = None
        self.tree_depths: Optional[mx.array] = None

    def make_mask(self, N: int, return_array: bool = False, window_size=None):
        if self.tree_mask is None or N != self.tree_mask.shape[0]:
            return super().make_mask(N, return_array=return_array, window_size=window_size)
        prefix = mx.ones((N, self.offset), dtype=mx.bool_)
        mask = mx.concatenate([prefix, self.tree_mask], axis=1)
        if window_size is not None:
            # mlx-lm's window, by position: node j (at offset + depth_j) sees a key at
            # position p when p > its position - window_size (a plain KVCache keeps
            # every key; a model asks for the window in the mask, e.g. exaone_moe).
            nodes = self.offset + self.tree_depths
            keys = mx.concatenate([mx.arange(self.offset), nodes])
            mask = mask & (nodes[:, None] < keys[None] + window_size)
        return mask


def make_tree_cache(backbone: nn.Module) -> list[TreeKVCache]:
    """One ``TreeKVCache`` per layer cache mlx-lm would make. Only for backbones
    ``backbone.inspect_backbone`` accepted (its ``check_cache_types`` refuses caches
    that cannot rewind: rotating windows, recurrent state, hybrids)."""
    return [TreeKVCache() for _ in make_prompt_cache(backbone)]


class _PerTokenRoPE(nn.Module):
    def __init__(self, rope: nn.Module, positions: mx.array):
        super().__init__()
        self.rope = rope
        self._positions = positions

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        # (B=1, H, T, D) -> (T, H, 1, D): each "batch row" is one node, with its own
        # offset. Partial rotary dims, traditional layout and scaled frequencies are
        # the wrapped module's own business: only the offset changes.
        y = self.rope(x.swapaxes(0, -2), offset=self._positions)
        return y.swapaxes(0, -2)


class _PerNodeEmbedding(nn.Module):
    """A learned absolute position table looked up at each node's own position
    (the model asks for ``offset + arange(T)``, whatever shape it builds them in)."""

    def __init__(self, table: nn.Embedding, positions: mx.array):
        super().__init__()
        self.table = table
        self._positions = positions

    def __call__(self, position_ids: mx.array) -> mx.array:
        return self.table(self._positions.reshape(position_ids.shape))


def _per_node_function(rotate, positions: mx.array):
    """A module-level rotary function (``rotate(x, offset, ...)``) applied with one
    offset per node, by the same (T, H, 1, D) view as ``_PerTokenRoPE``."""
    signature = inspect.signature(rotate)

    def per_node(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["offset"] = positions
        x = next(iter(bound.arguments))
        bound.arguments[x] = bound.arguments[x].swapaxes(0, -2)
        return rotate(*bound.args, **bound.kwargs).swapaxes(0, -2)

    return per_node


def _per_node(original, positions: mx.array):
    if isinstance(original, nn.Embedding):
        return _PerNodeEmbedding(original, positions)
    if isinstance(original, nn.Module):
        return _PerTokenRoPE(original, positions)
    return _per_node_function(original, positions)


@contextmanager
def tree_positions(slots: list[tuple], positions: mx.array):
    """``slots``: (parent, key) of every rotary module, position table or
    module-level rotary function (``backbone.position_slots``). A function slot is
    its model file's namespace: while the block runs, every model of that
    architecture in the process sees the per-node function (verification runs one
    forward at a time)."""
    originals = [parent[key] for parent, key in slots]
    try:
        for (parent, key), original in zip(slots, originals):
            parent[key] = _per_node(original, positions)
        yield
    finally:
        for (parent, key), rope in zip(slots, originals):
            parent[key] = rope


@contextmanager
def tree_attention(
    slots: list[tuple], caches: list[TreeKVCache], mask: mx.array, depths: mx.array
):
    """Within this block, one forward over the tree's nodes verifies the tree."""
    positions = depths + caches[0].offset
    for c in caches:
        c.tree_mask, c.tree_depths = mask, depths
    try:
        with tree_positions(slots, positions):
            yield
    finally:
        for c in caches:
            c.tree_mask = c.tree_depths = None


def compact_cache(caches: list[TreeKVCache], prefix_len: int, keep: list[int]) -> None:
    """Keep tree nodes ``keep`` (in order) right after the prefix; drop the rest."""
    n = len(keep)
    if keep != list(range(n)):
        index = mx.array([prefix_len + k for k in keep])
        for c in caches:
            c.keys[..., prefix_len : prefix_len + n, :] = c.keys[..., index, :]
            c.values[..., prefix_len : prefix_len + n, :] = c.values[..., index, :]
    for c in caches:
        c.offset = prefix_len + n

