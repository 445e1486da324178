"""Medusa heads: K small residual MLPs that guess tokens t+2 .. t+K+1.

Head k is ``L`` residual blocks ``x + SiLU(W x + b)`` followed by a vocabulary
projection. Medusa-1 heads own their projection; Medusa v2 heads reuse the
backbone's lm_head (``shared_lm_head=True``), so the caller passes it in.

With ``next_token_input`` each head also sees the token the base model has just
committed (the step's bonus token, t+1, always known before the heads run):
its input is ``h_t + U e(x_{t+1})`` with ``e`` the backbone's token embedding
and ``U`` zero-initialised. A plain Medusa head must guess t+2 without knowing
t+1; on a small backbone that costs most of its accuracy. The tree, the
verification and the acceptance rules are unchanged.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass
class HeadsArgs:
    hidden_size: int
    vocab_size: int
    num_heads: int = 4
    num_layers: int = 1
    shared_lm_head: bool = False
    next_token_input: bool = False
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
        if self.next_token_input:
            config["next_token_input"] = True
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
            "next_token_input",
            "quantization",
        }
        return cls(
            hidden_size=config["hidden_size"],
            vocab_size=config["vocab_size"],
            num_heads=config["medusa_num_heads"],
            num_layers=config["medusa_num_layers"],
            shared_lm_head=bool(config.get("shared_lm_head", False)),
            next_token_input=bool(config.get("next_token_input", False)),
            extra={k: v for k, v in config.items() if k not in known},
        )


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
        if args.next_token_input:
            self.token_in = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        if not args.shared_lm_head:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def features(self, x: mx.array, token_embedding: Optional[mx.array] = None) -> mx.array:
        if token_embedding is not None:
            x = x + self.token_in(token_embedding)
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
        token_embedding: Optional[mx.array] = None,
    ) -> mx.array:
        """hidden (..., H) -> logits (K, ..., V) of the first ``count`` heads (all by
        default). ``token_embedding`` (..., H): the embedded next token, required
        by (and only by) ``next_token_input`` heads."""
        if self.args.shared_lm_head and lm_head is None:
            raise ValueError("these heads share the backbone's lm_head: pass it in")
        if self.args.next_token_input != (token_embedding is not None):
            raise ValueError("next_token_input heads need token_embedding; other heads take none")
        heads = self.heads[:count]
        features = [head.features(hidden, token_embedding) for head in heads]
        if self.args.shared_lm_head:
            # One (K, .., H) x (H, V) product reads the large projection once, not K times.
            return lm_head(mx.stack(features))
        return mx.stack([head.lm_head(f) for head, f in zip(heads, features)])


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
            if args.next_token_input:
                head.token_in.weight = mx.zeros_like(head.token_in.weight)
    if lm_head_weight is not None and not args.shared_lm_head:
        for head in heads.heads:
            head.lm_head.weight = mx.array(lm_head_weight)
    mx.eval(heads.parameters())
    return heads


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_heads(path, heads: MedusaHeads, extra_config: Optional[dict] = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` into the folder ``path``."""
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


def load_heads(path) -> MedusaHeads:
    """Read a heads folder written by :func:`save_heads` (or ``convert.py``)."""
    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != "medusa-mlx":
        raise ValueError(
            f"{path} is not an MLX Medusa heads folder (convert torch heads with convert.py)"
        )
    heads = MedusaHeads(HeadsArgs.from_config(config))
    if "quantization" in config:
        q = config["quantization"]
        nn.quantize(
            heads,
            group_size=q["group_size"],
            bits=q["bits"],
            class_predicate=lambda p, m: p.endswith("lm_head"),
        )
    heads.load_weights(str(path / WEIGHTS_FILE), strict=True)
    mx.eval(heads.parameters())
    return heads


def _quantization_of(heads: MedusaHeads) -> Optional[dict]:
    for head in heads.heads:
        proj = getattr(head, "lm_head", None)
        if isinstance(proj, nn.QuantizedLinear):
            return {"group_size": proj.group_size, "bits": proj.bits}
    return None
