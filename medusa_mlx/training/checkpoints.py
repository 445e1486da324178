"""Training checkpoints: heads, optimizer state and the step reached, so that
``train --resume`` continues exactly where a run stopped."""

import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..heads import MedusaHeads, load_heads, save_heads

CHECKPOINTS = "checkpoints"


def save_checkpoint(out_dir: Path, heads, optimizer, step: int) -> Path:
    """Medusa heads or a context drafter (``load_heads`` reads either back)."""
    path = Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"
    save_heads(path, heads)
    mx.save_safetensors(str(path / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (path / "trainer.json").write_text(json.dumps({"step": step}) + "\n")
    return path


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    found = sorted((Path(out_dir) / CHECKPOINTS).glob("step-*"))
    found = [p for p in found if (p / "trainer.json").exists()]
    return found[-1] if found else None


def load_checkpoint(path: Path, heads: MedusaHeads, optimizer) -> int:
    """Restore heads and optimizer state in place; return the step reached."""
    saved = load_heads(path)
    heads.update(saved.parameters())
    optimizer.init(heads.trainable_parameters())
    state = mx.load(str(path / "optimizer.safetensors"))
    optimizer.state = tree_unflatten(list(state.items()))
    mx.eval(heads.parameters(), optimizer.state)
    return json.loads((path / "trainer.json").read_text())["step"]
