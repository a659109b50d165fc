"""experiments.megapixel_mnist: --smoke end to end, and its recipes."""
import json
import os
import subprocess
import sys

import pytest

from experiments import recipes


def test_recipes_turn_on_the_policy_options_the_paper_presets_leave_off():
    tnet = recipes.MEGAPIXEL_MNIST["train_512"]
    assert tnet.model_overrides["learn_location_scale"] and tnet.exploration_epsilon > 0
    assert recipes.FMOW["train_448"].exploration_epsilon == 0.0
    assert recipes.MEGAPIXEL_MNIST["finetune_1500"].init_from == "train_512"


@pytest.mark.slow
def test_smoke_runs_every_stage_and_reports_target_digit_hit_rates(tmp_path):
    command = [sys.executable, "-m", "experiments.megapixel_mnist", "--smoke",
               f"--output_dir={tmp_path}"]
    subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                   capture_output=True, timeout=600)
    rows = json.load(open(tmp_path / "results.json"))
    models = {row["model"].split()[0] for row in rows}
    assert models == {"TNet", "baseline", "MGNet"}
    deep = [row for row in rows if row.get("locations") and len(row["locations"]) == 4]
    assert deep and all(f"hit_rate_l{level}_chance" in deep[0] for level in (2, 3, 4, 5))
    assert all(0.0 <= deep[0][f"location_entropy_l{level}"] <= 2.2 for level in (2, 3, 4, 5))
    assert (tmp_path / "attention.png").exists() and (tmp_path / "accuracy_vs_gflops.png").exists()
