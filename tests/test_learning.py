"""The policy learns to attend the one cell that carries the label.

Runs `experiments.benchmark_learning` (per-feature regularization on) with a
small CPU budget: 400 steps of batch 32 (about 30 s on 2 shared cores).
The ablation without per-feature regularization is reported by
`python -m experiments.benchmark_learning`.
"""
import pytest

from experiments import benchmark_learning


@pytest.mark.slow
def test_policy_finds_the_informative_cell_and_attending_it_pays():
    result = benchmark_learning.run("per_feature", steps=400, batch=32, seed=0)
    before, after = result["before"], result["after"]
    print(result)
    assert before["hit_rate"] < 0.2                     # chance: 1/9
    assert after["hit_rate"] >= 0.9
    # Level 1 alone cannot read the texture; the attended cell can.
    assert after["accuracy_0_locations"] < 0.35          # chance: 1/4
    assert after["accuracy_1_location"] >= after["accuracy_0_locations"] + 0.15
