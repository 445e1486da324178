"""cost.py: the verify-cost curve and the step cost model trees are chosen with."""

import pytest

from medusa_mlx.cost import measure_cost, verify_cost_curve
from medusa_mlx.model import attach_heads
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return attach_heads(tiny_model("llama"), num_heads=4, seed=1)


def test_verify_cost_curve_is_relative_to_one_token(tiny):
    curve = verify_cost_curve(tiny, sizes=(2, 8), context=20, repeats=2)
    assert sorted(curve) == [1, 2, 8]
    assert curve[1] == 1.0
    assert all(v > 0 for v in curve.values())


def test_measured_cost_model_grows_with_the_tree(tiny):
    cost = measure_cost(tiny, sizes=(1, 4, 16), prefix_len=16, repeats=2)
    assert cost.plain > 0 and sorted(cost.verify) == [1, 4, 16]
    assert cost.verify[1] <= cost.verify[4] <= cost.verify[16]  # smoothed: more never costs less
    assert sorted(cost.heads) == [1, 2, 3, 4]
    assert cost.relative(16, 2) >= cost.relative(1, 1) > 0
