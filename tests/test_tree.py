"""tree.py: the tree buffers, presets and how a tree spec resolves for a model."""

import json

import pytest

from medusa_mlx.generate import medusa_generate_step
from medusa_mlx.heads import HeadsArgs, init_heads, load_heads, save_heads
from medusa_mlx.model import medusa_model
from medusa_mlx.tree import PRESETS, build_tree, expanded_nodes, saved_tree, tree_from_spec
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("llama", seed=3)


def test_tree_buffers():
    tree = build_tree([(0,), (1,), (0, 0), (0, 1)])
    assert tree.paths == ((), (0,), (1,), (0, 0), (0, 1))
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2]
    assert tree.mask.astype(int).tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
    ]
    # [root, head0 rank0, head0 rank1, head1 rank0, head1 rank1]
    assert tree.gather.tolist() == [0, 1, 2, 3, 4]
    assert [tree.path_nodes(j) for j in (2, 3, 4)] == [[0, 2], [0, 1, 3], [0, 1, 4]]
    with pytest.raises(ValueError, match="no parent"):
        build_tree([(0, 0)])
    sizes = {name: tree_from_spec(name, 5).size for name in PRESETS}
    assert sizes["tree-8"] == 8 and sizes["tree-16"] == 16
    assert sizes["tree-32"] == 32 and sizes["tree-64"] == 64
    assert [sizes[f"chain-{n}"] for n in range(1, 6)] == [2, 3, 4, 5, 6]
    assert tree_from_spec("tree-64", 2).depth == 2


def test_tree_auto_resolves_from_heads_config(backbone, tmp_path):
    args = HeadsArgs(64, 128, num_heads=3, num_layers=1)
    heads = init_heads(args)
    paths = [[0], [1], [0, 0]]
    save_heads(tmp_path, heads, extra_config={"tree": paths})
    assert json.loads((tmp_path / "config.json").read_text())["tree"] == paths
    model = medusa_model(backbone, load_heads(tmp_path))
    assert saved_tree(model) == [(0,), (1,), (0, 0)]
    steps = list(medusa_generate_step([1, 2, 3], model, max_tokens=12, tree="auto"))
    assert {s.tree_size for s in steps[1:]} == {build_tree(paths).size}
    with pytest.raises(ValueError, match="saved_tree"):
        tree_from_spec("auto", 3)
    # Heads without a stored tree fall back to a small preset.
    assert saved_tree(medusa_model(backbone, init_heads(args))) == "tree-8"


def test_expanded_nodes_count_nodes_with_children():
    assert expanded_nodes([(0,), (1,), (0, 0), (0, 1)]) == 2  # the root and (0,)
