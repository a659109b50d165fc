"""experiments.megapixel_mnist: the digit pretraining's glimpses, --smoke end to
end, and its recipes."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from experiments import megapixel_mnist, recipes


def test_recipes_turn_on_the_policy_options_the_paper_presets_leave_off():
    tnet = recipes.MEGAPIXEL_MNIST["train_1500"]
    overrides = tnet.model_overrides
    assert overrides["learn_location_scale"] and overrides["glimpse_antialias"]
    assert tnet.exploration_epsilon > 0 and tnet.init_from == megapixel_mnist.PRETRAIN_STAGE
    assert recipes.FMOW["train_448"].exploration_epsilon == 0.0
    assert "glimpse_antialias" not in recipes.FMOW["train_448"].model_overrides


def test_pretraining_squares_hold_their_digit_at_every_scale():
    tf.random.set_seed(0)
    boxes = np.array([[0.40, 0.20, 0.42, 0.22], [0.0, 0.98, 0.02, 1.0]] * 500, np.float32)
    squares = megapixel_mnist.glimpse_squares(boxes, (0.0625, 0.25)).numpy()
    side = squares[:, 2] - squares[:, 0]
    np.testing.assert_allclose(squares[:, 3] - squares[:, 1], side, atol=1e-6)
    assert side.min() >= 0.0625 - 1e-6 and side.max() <= 0.25 + 1e-6
    # Log-uniform: the median side is the geometric mean of the bounds.
    assert abs(np.median(side) - math.sqrt(0.0625 * 0.25)) < 0.01
    assert np.all(squares[:, :2] <= boxes[:, :2] + 1e-6) and np.all(squares[:, 2:] >= boxes[:, 2:] - 1e-6)
    assert squares.min() >= -1e-6 and squares.max() <= 1.0 + 1e-6
    # The digit's position in the square is uniform: both halves occur.
    centre = (boxes[0::2, 1] - squares[0::2, 1]) / side[0::2]
    assert centre.min() < 0.3 and centre.max() > 0.6

    images = tf.zeros([2, 100, 100, 3])
    glimpses, labels = megapixel_mnist.digit_glimpses(images, tf.constant([3, 7]),
                                                      tf.reshape(boxes[:6], [2, 3, 4]), 32)
    assert glimpses.shape == (6, 32, 32, 3) and labels.numpy().tolist() == [3, 3, 3, 7, 7, 7]


@pytest.mark.slow
def test_smoke_runs_every_stage_and_reports_target_digit_hit_rates(tmp_path):
    command = [sys.executable, "-m", "experiments.megapixel_mnist", "--smoke",
               f"--output_dir={tmp_path}"]
    subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                   capture_output=True, timeout=600)
    rows = json.load(open(tmp_path / "results.json"))
    models = {row["model"].split(",")[0].split()[0] for row in rows}
    assert models == {"TNet", "baseline", "MGNet"}
    assert rows[-1]["model"] == "MGNet, glimpses on the target digits (oracle)"
    assert (tmp_path / megapixel_mnist.PRETRAIN_STAGE / "final" / "checkpoint").exists()
    deep = [row for row in rows if row.get("locations") and len(row["locations"]) == 2]
    assert deep and all(f"hit_rate_l{level}_chance" in deep[0] for level in (2, 3))
    limit = math.log(49) + 1e-3                       # 7x7 cells
    assert all(0.0 <= deep[0][f"location_entropy_l{level}"] <= limit for level in (2, 3))
    assert (tmp_path / "attention.png").exists() and (tmp_path / "accuracy_vs_gflops.png").exists()
