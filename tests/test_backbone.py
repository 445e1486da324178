"""What Medusa reads from a backbone: the hidden state and exactly plain decoding's
logits from one untouched call, the output path, per-node positions, and the
one-line refusals at load. tests/test_zoo.py runs the same code over every mlx-lm
architecture; these tests pin the mechanisms down on the ones that need them."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from zoo_models import zoo_model

from medusa_mlx.backbone import (find_body, hidden_and_logits, inspect_backbone, is_linear,
                                 output_path, position_slots)
from medusa_mlx.errors import UnsupportedModelError
from medusa_mlx.heads import HeadsArgs, init_heads
from medusa_mlx.model import attach_heads, medusa_model
from tiny_models import tiny_model

TOKENS = mx.array([[1, 5, 9, 17, 33]])


def test_one_call_gives_plain_logits_and_leaves_the_model_as_it_was():
    backbone = tiny_model("qwen2")  # tied output layer: read through the inner model
    body = find_body(backbone)
    inner = body.parent[body.key]
    hidden, logits = hidden_and_logits(backbone, body, TOKENS)
    assert body.parent[body.key] is inner and hidden.shape == (1, 5, 64)
    assert np.array_equal(np.array(logits), np.array(backbone(TOKENS)))
    assert np.allclose(np.array(output_path(backbone, body)(hidden)), np.array(logits), atol=1e-5)


def test_soft_capped_logits_stay_the_models_and_head_vocab_slices_them():
    """gemma2 soft-caps its logits: the output path is not linear, so head-vocabulary
    heads score the full path and keep their slice (a sliced matrix would be wrong)."""
    backbone = zoo_model("gemma2")
    body = find_body(backbone)
    project = output_path(backbone, body)
    assert not is_linear(project, 64)
    vocab = list(range(0, 128, 4))
    args = HeadsArgs(64, 128, num_heads=2, shared_lm_head=True, extra={"head_vocab": vocab})
    model = medusa_model(backbone, init_heads(args, seed=1))
    hidden = hidden_and_logits(backbone, body, TOKENS)[0][0, -1]
    full = np.array(model.heads(hidden, project, 2))[:, vocab]
    assert np.allclose(np.array(model.head_logits(hidden, 2)), full, atol=1e-5)


def test_a_layer_container_its_owner_never_calls_is_not_the_inner_model():
    """plamo keeps its layers in a PlamoDecoder that PlamoModel iterates itself."""
    backbone = zoo_model("plamo")
    assert find_body(backbone).name == "model"
    inspect_backbone(backbone)  # and the probe tree reproduces plain decoding


def test_learned_position_tables_and_rotary_modules_are_found_wherever_they_sit():
    assert [key for _, key in position_slots(zoo_model("gpt2"))] == ["wpe"]
    assert len(position_slots(zoo_model("gptj"))) == 2  # partial rotary, one per layer


def test_a_module_level_rotary_function_gets_one_position_per_node():
    """nanochat rotates with its own function ``apply_rotary_emb(x, offset=cache.offset)``
    called inside attention (no rotary module): the function is wrapped for the one
    verification forward, and put back afterwards."""
    from mlx_lm.models import nanochat

    backbone = zoo_model("nanochat")
    original = nanochat.apply_rotary_emb
    assert [key for _, key in position_slots(backbone)] == ["apply_rotary_emb"]
    inspect_backbone(backbone)  # the probe tree reproduces plain decoding
    assert nanochat.apply_rotary_emb is original


class _InlineRotation(nn.Module):
    """Rotates with ``mx.fast.rope`` itself: neither a rotary class name nor a
    rotary function the positions hook can find."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims

    def __call__(self, x, offset=0):
        return mx.fast.rope(x, self.dims, traditional=False, base=10000.0, scale=1.0,
                            offset=offset)


def test_positions_the_hooks_cannot_reach_are_refused_in_one_line():
    backbone = tiny_model("llama")
    for layer in backbone.model.layers:
        layer.self_attn.rope = _InlineRotation(layer.self_attn.rope.dims)
    with pytest.raises(UnsupportedModelError) as e:
        inspect_backbone(backbone)
    assert "'llama' is not supported: tree verification does not reproduce" in str(e.value)
    assert "\n" not in str(e.value)


def test_phi3small_is_refused_by_name_before_the_probe_runs():
    """Verifying a tree through phi3small's block-sparse attention segfaults MLX
    0.32.4 on CPU, so no tiny phi3small is built here: any backbone that says it is
    one is refused by name, before a tree is verified."""
    backbone = tiny_model("llama")
    backbone.model_type = "phi3small"  # what mlx-lm models set from their config
    with pytest.raises(UnsupportedModelError) as e:
        attach_heads(backbone, num_heads=2)
    assert "'phi3small' is not supported: its block-sparse attention" in str(e.value)
    assert "segmentation fault" in str(e.value) and "\n" not in str(e.value)
