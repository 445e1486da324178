"""Medusa heads: K small residual MLPs that guess tokens t+2 .. t+K+1.

Head k is ``L`` residual blocks ``x + SiLU(W x + b)`` followed by a vocabulary
projection. Medusa-1 heads own their projection; Medusa v2 heads reuse the
backbone's lm_head (``shared_lm_head=True``), so the caller passes it in.

Sequential heads (``sequential=True``, a medusa-mlx extension in the spirit of
Hydra and EAGLE) also see the token right before the one they guess. Head 0
guesses t+2 and sees t+1, the token the base model has just committed (the
step's bonus token, known before the heads run); head k sees head k-1's best
guess and works on head k-1's features instead of ``h_t``:

    f_{-1} = h_t,    f_k = blocks_k(f_{k-1} + U_k e(token_k)),    logits_k = lm_head(f_k)

with ``e`` the backbone's token embedding and ``U_k`` zero-initialised (so at
step 0 they are plain Medusa heads). Training feeds the true tokens (teacher
forcing). A plain Medusa head must guess t+2 without knowing t+1; on a small
backbone that costs most of its accuracy. Tree, verification and acceptance
are unchanged: candidates are still each depth's top-k tokens.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .context import KIND as CONTEXT_KIND, load_drafter
from .errors import ConfigError
from .safe_files import (
    MAX_HIDDEN, MAX_VOCAB, check_int, check_tensors, inside, is_int, read_json,
    read_safetensors_header, regular_file,
)
from .tree import check_paths

# Sane ranges for heads configs (vocabulary and hidden size: safe_files.MAX_VOCAB /
# MAX_HIDDEN); Medusa uses 1-5 heads of 1-2 blocks. A config beyond them is refused
# before anything is built (10^9 heads or a group size of 0 crashed MLX).
MAX_HEADS = 64
MAX_LAYERS = 64
QUANT_GROUP_SIZES = (32, 64, 128)  # what mx.quantize accepts
QUANT_BITS = (2, 3, 4, 5, 6, 8)


@dataclass
class HeadsArgs:
    hidden_size: int
    vocab_size: int
    num_heads: int = 4
    num_layers: int = 1
    shared_lm_head: bool = False
    sequential: bool = False
    # Free-form provenance (base model id, training command, preferred tree).
    extra: dict = field(default_factory=dict)

    def to_config(self) -> dict:
        config = {
            "format": "medusa-mlx",
            "medusa_num_heads": self.num_heads,
            "medusa_num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "shared_lm_head": self.shared_lm_head,
        }
        if self.sequential:
            config["sequential_heads"] = True
        config.update(self.extra)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "HeadsArgs":
        known = {
            "format",
            "medusa_num_heads",
            "medusa_num_layers",
            "hidden_size",
            "vocab_size",
            "shared_lm_head",
            "sequential_heads",
            "quantization",
        }
        check_config(config)
        return cls(
            hidden_size=config["hidden_size"],
            vocab_size=config.get("vocab_size"),
            num_heads=config["medusa_num_heads"],
            num_layers=config["medusa_num_layers"],
            shared_lm_head=bool(config.get("shared_lm_head", False)),
            sequential=bool(config.get("sequential_heads", False)),
            extra={k: v for k, v in config.items() if k not in known},
        )


def check_config(config: dict) -> None:
    """Every value of a heads config (see the README's Heads format) within its sane
    range, before anything is allocated from it."""
    shared = config.get("shared_lm_head", False)
    for key in ("shared_lm_head", "sequential_heads"):
        if not isinstance(config.get(key, False), bool):
            raise ConfigError(f"heads config {key} is {config[key]!r:.40}, expected true/false")
    check_int(config, "hidden_size", 1, MAX_HIDDEN, "heads")
    check_int(config, "vocab_size", 1, MAX_VOCAB, "heads", optional=shared)
    check_int(config, "medusa_num_heads", 1, MAX_HEADS, "heads")
    check_int(config, "medusa_num_layers", 0, MAX_LAYERS, "heads")
    if "quantization" in config:
        q = config["quantization"]
        if not (isinstance(q, dict) and q.get("group_size") in QUANT_GROUP_SIZES
                and q.get("bits") in QUANT_BITS and is_int(q["bits"])):
            raise ConfigError(f"heads config quantization {q!r:.80} needs group_size in "
                              f"{QUANT_GROUP_SIZES} and bits in {QUANT_BITS}")
        if config["hidden_size"] % q["group_size"]:
            raise ConfigError(f"hidden_size {config['hidden_size']} is not a multiple of the "
                              f"quantization group size {q['group_size']}")
    if "tree" in config:
        try:
            check_paths(config["tree"], "heads config tree")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if config.get("head_vocab") is not None:
        check_head_vocab(config["head_vocab"], config.get("vocab_size") or MAX_VOCAB)


def check_head_vocab(ids, vocab_size: int) -> None:
    """A head vocabulary is a list of distinct token ids of the backbone's vocabulary
    (an id past it made MLX read out of bounds, or crash)."""
    if not (isinstance(ids, list) and 0 < len(ids) <= vocab_size
            and all(is_int(i) and 0 <= i < vocab_size for i in ids)
            and len(set(ids)) == len(ids)):
        raise ConfigError(f"head_vocab must be distinct token ids from 0 to {vocab_size - 1}")


class ResBlock(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.linear = nn.Linear(dims, dims)

    def __call__(self, x: mx.array) -> mx.array:
        return x + nn.silu(self.linear(x))


class MedusaHead(nn.Module):
    def __init__(self, args: HeadsArgs):
        super().__init__()
        self.blocks = [ResBlock(args.hidden_size) for _ in range(args.num_layers)]
        if args.sequential:
            self.token_in = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        if not args.shared_lm_head:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def run_blocks(self, x: mx.array) -> mx.array:
        for block in self.blocks:
            x = block(x)
        return x


class MedusaHeads(nn.Module):
    """All K heads. ``__call__`` returns logits stacked on a new leading axis."""

    def __init__(self, args: HeadsArgs):
        super().__init__()
        self.args = args
        self.heads = [MedusaHead(args) for _ in range(args.num_heads)]

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def __call__(
        self,
        hidden: mx.array,
        lm_head: Optional[Callable[[mx.array], mx.array]] = None,
        count: Optional[int] = None,
        embed: Optional[Callable[[mx.array], mx.array]] = None,
        tokens: Optional[mx.array] = None,
        vocab: Optional[mx.array] = None,
    ) -> mx.array:
        """hidden (..., H) -> logits (K, ..., V) of the first ``count`` heads (all by default).

        Sequential heads also take ``embed`` (token ids -> embeddings) and
        ``tokens`` (..., T >= 1): column j is the token head j sees (column 0:
        the token after ``hidden``'s position); heads past column T-1 see the
        previous head's best guess, mapped through ``vocab`` when the projection
        scores only those token ids."""
        if self.args.shared_lm_head and lm_head is None:
            raise ValueError("these heads share the backbone's lm_head: pass it in")
        if self.args.sequential != (tokens is not None):
            raise ValueError("sequential heads need tokens (and embed); other heads take none")
        heads = self.heads[:count]
        project = lm_head if self.args.shared_lm_head else None
        if not self.args.sequential:
            features = [head.run_blocks(hidden) for head in heads]
            if project is not None:
                # One (K, .., H) x (H, V) product reads the large projection once, not K times.
                return project(mx.stack(features))
            return mx.stack([head.lm_head(f) for head, f in zip(heads, features)])
        logits, x, token = [], hidden, tokens[..., 0]
        for k, head in enumerate(heads):
            x = self.advance(k, x, embed(token))
            logits.append(project(x) if project is not None else head.lm_head(x))
            if k + 1 < tokens.shape[-1]:
                token = tokens[..., k + 1]
            else:
                token = mx.argmax(logits[-1], axis=-1)
                token = token if vocab is None else vocab[token]
        return mx.stack(logits)

    def advance(self, k: int, features: mx.array, token_embedding: mx.array) -> mx.array:
        """Sequential head k's features from the previous head's (``h_t`` for
        head 0) and the embedding of the token it sees."""
        head = self.heads[k]
        return head.run_blocks(features + head.token_in(token_embedding))


def keep_heads(heads: MedusaHeads, count: int) -> MedusaHeads:
    """The first ``count`` heads alone. Their logits do not change: plain heads
    are independent, and a sequential head only depends on the heads before it."""
    if not 1 <= count <= heads.num_heads:
        raise ValueError(f"can keep 1 to {heads.num_heads} heads, not {count}")
    heads.heads = heads.heads[:count]
    heads.args.num_heads = count
    return heads


def init_heads(
    args: HeadsArgs,
    seed: int = 0,
    zero_blocks: bool = False,
    lm_head_weight: Optional[mx.array] = None,
) -> MedusaHeads:
    """Fresh heads. ``zero_blocks`` + ``lm_head_weight`` is Medusa's training init
    (each head starts as the base model's own next-token predictor); the default
    random init gives heads whose guesses are mostly wrong, which tests want."""
    mx.random.seed(seed)
    heads = MedusaHeads(args)
    if zero_blocks:
        for head in heads.heads:
            for block in head.blocks:
                block.linear.weight = mx.zeros_like(block.linear.weight)
                block.linear.bias = mx.zeros_like(block.linear.bias)
            if args.sequential:
                head.token_in.weight = mx.zeros_like(head.token_in.weight)
    if lm_head_weight is not None and not args.shared_lm_head:
        for head in heads.heads:
            head.lm_head.weight = mx.array(lm_head_weight)
    mx.eval(heads.parameters())
    return heads


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_heads(path, heads, extra_config: Optional[dict] = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` into the folder ``path``:
    Medusa heads or a context drafter (``load_heads`` reads either back)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = heads.args.to_config()
    config.update(extra_config or {})
    quantization = _quantization_of(heads)
    if quantization:
        config["quantization"] = quantization
    weights = dict(tree_flatten(heads.parameters()))
    mx.save_safetensors(str(path / WEIGHTS_FILE), weights, metadata={"format": "mlx"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_heads(path):
    """Read a heads folder written by :func:`save_heads` (or ``convert.py``), or
    a context drafter's (``"kind": "context"``, see ``context.py``).

    The config is checked value by value and the weights file's header against the
    config (names and shapes) before MLX reads anything."""
    path = Path(path)
    config = read_json(inside(path, CONFIG_FILE, "heads config"), "heads config")
    if config.get("format") != "medusa-mlx":
        raise ConfigError(
            f"{path} is not an MLX Medusa heads folder (convert torch heads with convert.py)"
        )
    if config.get("kind", "medusa") == CONTEXT_KIND:  # an EAGLE-style context drafter
        return load_drafter(config, regular_file(inside(path, WEIGHTS_FILE, "heads weights"),
                                                 "heads weights"))
    if config.get("kind", "medusa") != "medusa":
        raise ConfigError(f"{path}: unknown heads kind {config['kind']!r:.40} (medusa or "
                          f"{CONTEXT_KIND})")
    heads = MedusaHeads(HeadsArgs.from_config(config))  # lazy: nothing is computed yet
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(
            heads,
            group_size=q["group_size"],
            bits=q["bits"],
            class_predicate=lambda p, m: p.endswith("lm_head"),
        )
    weights = regular_file(inside(path, WEIGHTS_FILE, "heads weights"), "heads weights")
    _check_tensors(weights, heads)
    heads.load_weights(str(weights), strict=True)
    mx.eval(heads.parameters())
    return heads


def _check_tensors(weights: Path, heads: MedusaHeads) -> None:
    """The file holds exactly the tensors the config implies, in their shapes."""
    found = read_safetensors_header(weights)
    held = {int(n.split(".")[1]) for n in found if n.split(".")[:1] == ["heads"]
            and n.split(".")[1].isdigit()}
    if len(held) != heads.num_heads:
        raise ConfigError(f"{weights} holds tensors of {len(held)} heads, its config says "
                          f"medusa_num_heads={heads.num_heads}")
    check_tensors(weights, found, heads)


def _quantization_of(heads) -> Optional[dict]:
    for head in getattr(heads, "heads", ()):  # a context drafter is never quantized
        proj = getattr(head, "lm_head", None)
        if isinstance(proj, nn.QuantizedLinear):
            return {"group_size": proj.group_size, "bits": proj.bits}
    return None
