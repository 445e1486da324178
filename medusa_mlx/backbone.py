"""What Medusa needs from an mlx-lm backbone, and the checks that it has it.

Medusa needs, at every position, the hidden state the heads read *and* the logits
plain decoding would produce. Splitting the backbone into "inner model" and
"lm_head" and calling the halves ourselves would re-implement each architecture's
top-level forward, and that is where architectures differ (logit scaling,
soft-capping, tied or untied output layers under any name, extra arguments to the
inner model). Instead, for the length of one call, the inner model (the module
that owns the transformer layers) is replaced in its parent by a stand-in that
runs it and records its output; the backbone's own ``__call__`` does everything
else (``hidden_and_logits``). The original module is put back before the call
returns, so nothing is left on the model object. The same stand-in can instead
*return* a given hidden state: the backbone's own code then maps it to logits,
which is how shared-projection heads rank their candidates (``output_path``).

The checks (``inspect_backbone``, at load) refuse an unsupported architecture
with one line naming it instead of decoding wrongly later: caches that cannot
drop rejected tree nodes (``check_cache_types``), logits that depend on more than
the inner model's output (``split_backbone``), and anything a 4-node probe tree
shows that per-node positions (``position_slots``: every rotary module, whatever
its attribute name or class, and learned position tables) or the tree mask do not reach
(``check_tree_verification``).
"""

import inspect
import sys
from contextlib import contextmanager
from typing import Callable, NamedTuple, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, make_prompt_cache

from .attention import make_tree_cache, tree_attention
from .errors import UnsupportedModelError


def model_type(backbone: nn.Module) -> str:
    args = getattr(backbone, "args", None)
    return getattr(backbone, "model_type", None) or getattr(args, "model_type", None) or type(backbone).__module__


def _refuse(backbone: nn.Module, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"architecture '{model_type(backbone)}' is not supported: {reason}")


def check_cache_types(backbone: nn.Module) -> list:
    """mlx-lm's per-layer caches for ``backbone``, or a one-line refusal when a
    layer's cache cannot drop rejected tree nodes (rotating windows, recurrent
    state, hybrids)."""
    caches = make_prompt_cache(backbone)
    for c in caches:
        if type(c) is not KVCache:
            raise _refuse(backbone, f"its layers use {type(c).__name__}, which cannot drop "
                          "rejected tree nodes (Medusa needs the plain trimmable KVCache in "
                          "every layer)")
    return caches


# ---------------------------------------------------------------- hidden state and logits


class _StandIn(nn.Module):
    """Takes the inner model's place for one call. Attribute reads fall through to
    the inner model (backbones read e.g. ``self.model.embed_tokens`` for tied
    output layers); the inner model is not a child, so parameters are unchanged."""

    def __init__(self, inner: nn.Module, record: Optional[list], replace: Optional[mx.array]):
        super().__init__()
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_record", record)
        object.__setattr__(self, "_replace", replace)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_inner"), name)

    def __call__(self, *args, **kwargs):
        if self._replace is not None:
            return self._replace
        out = self._inner(*args, **kwargs)
        self._record.append(out)
        return out


class BodyPath(NamedTuple):
    """Where the inner model sits: ``parent[key]``."""

    parent: nn.Module
    key: str
    name: str  # dotted path inside the backbone, for messages


def find_body(backbone: nn.Module) -> BodyPath:
    """The inner model: the shallowest module below the backbone that holds the
    layers ``backbone.layers`` returns (mlx-lm's cache code relies on that property;
    it may be a pipeline slice), whatever the list is called (``layers``, ``h``...).
    When that module is a plain container its owner never calls (plamo iterates
    ``self.layers.layers``), the closest enclosing module called once per forward
    is the inner model: found by tracing one token (lazily, nothing is computed)."""
    layers = getattr(backbone, "layers", None)
    first = layers[0] if layers else None
    owners = [
        name for name, module in backbone.named_modules()
        if name and first is not None and any(
            isinstance(value, list) and any(item is first for item in value)
            for value in module.values())
    ]
    if not owners:
        raise _refuse(backbone, "no inner model owns its layers (the final hidden state is "
                      "read from the inner model's output)")
    name = min(owners, key=lambda n: n.count("."))
    candidates = [_body_path(backbone, name)]
    while "." in name:
        name = name.rpartition(".")[0]
        candidates.append(_body_path(backbone, name))
    for path in candidates[:-1]:
        record = []
        with _standing_in(path, record=record):
            backbone(mx.array([[1]]))
        if len(record) == 1:
            return path
    return candidates[-1]


def _body_path(backbone: nn.Module, name: str) -> BodyPath:
    parent_name, _, key = name.rpartition(".")
    parent = backbone
    for part in parent_name.split(".") if parent_name else []:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    return BodyPath(parent, key, name)


@contextmanager
def _standing_in(path: BodyPath, record=None, replace=None):
    inner = path.parent[path.key]
    path.parent[path.key] = _StandIn(inner, record, replace)
    try:
        yield
    finally:
        path.parent[path.key] = inner


def hidden_and_logits(backbone: nn.Module, path: BodyPath, tokens: mx.array,
                      cache=None) -> tuple[mx.array, mx.array]:
    """tokens (B, T) -> (hidden (B, T, H), logits (B, T, V)), both from one
    ``backbone(tokens, cache=cache)`` call."""
    record = []
    with _standing_in(path, record=record):
        logits = backbone(tokens, cache=cache)
    if len(record) != 1 or not isinstance(record[0], mx.array):
        raise _refuse(backbone, f"its inner model '{path.name}' was called {len(record)} "
                      "times or returned no single array")
    return record[0], logits


def output_path(backbone: nn.Module, path: BodyPath) -> Callable[[mx.array], mx.array]:
    """hidden (..., H) -> logits (..., V) through the backbone's own code after the
    inner model (scaling, soft-capping, any output layer)."""

    def project(hidden: mx.array) -> mx.array:
        flat = hidden.reshape(1, -1, hidden.shape[-1])
        with _standing_in(path, replace=flat):
            logits = backbone(mx.zeros(flat.shape[:2], dtype=mx.int32))
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])

    return project


def split_backbone(backbone: nn.Module) -> tuple[Callable, Callable]:
    """(tokens -> final hidden state, hidden -> logits), both through the backbone's
    own code (for training and evaluation, which need the two separately).
    Refuses backbones whose logits are not a function of the inner model's output."""
    body = find_body(backbone)
    project = output_path(backbone, body)
    hidden, logits = hidden_and_logits(backbone, body, mx.array([[1, 2]]))
    got = project(hidden)
    scale = float(mx.abs(logits).max().item()) or 1.0
    if got.shape != logits.shape or not mx.allclose(got, logits, atol=1e-4 * scale, rtol=1e-3):
        raise _refuse(backbone, f"its logits depend on more than the output of its inner "
                      f"model '{body.name}'")

    def hidden_states(tokens: mx.array, cache=None) -> mx.array:
        return hidden_and_logits(backbone, body, tokens, cache)[0]

    return hidden_states, project


def token_embedding(backbone: nn.Module, path: Optional[BodyPath] = None,
                    vocab_size: Optional[int] = None) -> Optional[nn.Module]:
    """The inner model's token embedding (tokens -> vectors, what sequential heads
    see): its first embedding table with one row per token; None without one."""
    path = path or find_body(backbone)
    if vocab_size is None:
        vocab_size = hidden_and_logits(backbone, path, mx.array([[1]]))[1].shape[-1]
    for _, module in path.parent[path.key].named_modules():
        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            if module.weight.shape[0] == vocab_size:
                return module
    return None


def lm_head_weight(lm_head: Callable, hidden_size: int) -> mx.array:
    """(V, H) matrix of any linear projection, quantized, tied or scaled: lm_head(I) = W^T."""
    return lm_head(mx.eye(hidden_size)).T


def is_linear(project: Callable[[mx.array], mx.array], hidden_size: int) -> bool:
    """Whether the output path is a linear map (a projection, maybe scaled), so a
    slice of its matrix scores a subset of tokens exactly; soft-capping is not."""
    x = mx.random.normal((2, hidden_size), key=mx.random.key(0))
    a, b, both, zero = project(x[:1]), project(x[1:]), project(x[:1] + x[1:]), project(0 * x[:1])
    scale = float(mx.abs(both).max().item()) or 1.0
    return bool(mx.allclose(a + b, both, atol=1e-4 * scale, rtol=1e-3).item()) and float(
        mx.abs(zero).max().item()) <= 1e-5 * scale


# ---------------------------------------------------------------- per-node positions


def _is_rotary(module: nn.Module) -> bool:
    """mlx's ``nn.RoPE``, every class in mlx-lm's ``rope_utils`` (llama3, yarn,
    longrope/su, linear and dynamic scaling) and model-local rotary classes, which
    mlx-lm names ``*RoPE*`` / ``*Rotary*`` whatever attribute holds them."""
    name = type(module).__name__.lower()
    # By the end of the name: "RoPEAttention" is an attention module, not a rotary one.
    return (isinstance(module, nn.RoPE) or type(module).__module__.endswith("rope_utils")
            or name.endswith(("rope", "rotary", "rotaryembedding", "rotaryemb")))


def _rotary_functions(backbone: nn.Module) -> list[tuple]:
    """Module-level rotary functions that take the position ``offset`` themselves:
    nanochat's attention calls ``apply_rotary_emb(x, offset=cache.offset, ...)``, a
    function of its model file, with no rotary module to wrap. Slot: (the model
    file's namespace, the function's name); only functions defined in a file one of
    the backbone's own classes comes from, named like a rotary function, with an
    ``offset`` parameter."""
    slots = []
    for name in sorted({type(m).__module__ for m in backbone.modules()}):
        namespace = vars(sys.modules[name]) if name in sys.modules else {}
        for key, value in sorted(namespace.items()):
            if (inspect.isfunction(value) and value.__module__ == name
                    and any(w in key.lower() for w in ("rope", "rotary"))
                    and "offset" in inspect.signature(value).parameters):
                slots.append((namespace, key))
    return slots


def position_slots(backbone: nn.Module) -> list[tuple]:
    """Every place (parent, key) that holds a rotary module, outermost ones only
    (a rotary class that wraps ``nn.RoPE`` is wrapped once), whatever the attribute
    is called, every learned absolute position table (GPT-2's ``wpe``, which
    gpt2 and gpt_bigcode look up at ``cache.offset + arange(T)``), and every
    module-level rotary function that takes an offset (``_rotary_functions``).
    Layers without any of these (NoPE) need no positions."""
    slots, stack = _rotary_functions(backbone), [backbone]
    while stack:
        module = stack.pop()
        items = module.items() if isinstance(module, dict) else enumerate(module)
        for key, value in items:
            if isinstance(value, nn.Module) and (
                    _is_rotary(value) or (key == "wpe" and isinstance(value, nn.Embedding))):
                slots.append((module, key))
            elif isinstance(value, (nn.Module, list)):
                stack.append(value)
    return slots


# A probe tree: root, two children, one grandchild under the first child. Node 2
# (depth 1, third in the batch) and node 3 (depth 2, fourth) are both misplaced
# when positions or the mask do not reach a layer.
_PROBE_MASK = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
_PROBE_DEPTHS = [0, 1, 1, 2]

# Architectures the probe itself cannot run on: refused by name, before it runs.
_CRASHES_ON_PROBE = {
    "phi3small": "its block-sparse attention adds the tree mask to its scores itself; "
                 "verifying a tree crashed MLX 0.32.4 on CPU (segmentation fault)",
}


def check_tree_verification(backbone: nn.Module, slots: list) -> None:
    """Verify a 4-node probe tree and compare each node's logits with plain
    decoding of its path. Per-node positions (any rotary form) and the tree mask
    must reach every layer; what they do not reach (positions computed inside
    attention without a module, a mask built without the cache, a rotary module that cannot
    take one offset per node) is refused here instead of decoding differently.
    Costs 4 short forwards at load."""
    if model_type(backbone) in _CRASHES_ON_PROBE:
        raise _refuse(backbone, _CRASHES_ON_PROBE[model_type(backbone)])
    prefix, nodes = [1, 2, 3], [4, 5, 6, 7]
    cache = make_tree_cache(backbone)
    backbone(mx.array([prefix]), cache=cache)
    try:
        with tree_attention(slots, cache, mx.array(_PROBE_MASK, dtype=mx.bool_),
                            mx.array(_PROBE_DEPTHS)):
            tree = backbone(mx.array([nodes]), cache=cache)[0]
        mx.eval(tree)
    except (ValueError, TypeError) as e:
        raise _refuse(backbone, "its rotary embedding cannot take one position per tree "
                      f"node ({e})") from None
    chain = backbone(mx.array([prefix + [4, 5, 7]]))[0, -3:]
    branch = backbone(mx.array([prefix + [4, 6]]))[0, -1]
    expected = mx.stack([chain[0], chain[1], branch, chain[2]])
    scale = float(mx.abs(expected).max().item()) or 1.0
    tolerance = (1e-3 if expected.dtype == mx.float32 else 5e-2) * scale
    worst = float(mx.abs(tree.astype(mx.float32) - expected.astype(mx.float32)).max().item())
    if worst > tolerance:
        raise _refuse(backbone, f"tree verification does not reproduce its logits (off by "
                      f"{worst:.3g}): per-node positions or the tree mask do not reach every "
                      f"layer ({len(slots)} rotary modules or position tables found)")


class BackboneParts(NamedTuple):
    position_slots: list
    body: BodyPath
    output_path: Callable
    hidden_size: int
    vocab_size: int


def inspect_backbone(backbone: nn.Module) -> BackboneParts:
    """Refuse unsupported backbones early (one line each) and take them apart once."""
    check_cache_types(backbone)
    split_backbone(backbone)  # refuses logits that are more than f(inner model output)
    body = find_body(backbone)
    slots = position_slots(backbone)
    check_tree_verification(backbone, slots)
    hidden, logits = hidden_and_logits(backbone, body, mx.array([[1]]))
    return BackboneParts(slots, body, output_path(backbone, body), hidden.shape[-1],
                         logits.shape[-1])
