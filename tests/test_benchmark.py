"""experiments.benchmark: the hand-written EN-B0 it compares against, its
timing protocol, its verdicts, and a whole run on tiny models."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from experiments import benchmark, handwritten_efficientnet
from tnet_tf import backbones


def test_handwritten_efficientnet_b0_equals_ours_with_folded_weights():
    # Batch norm with non-trivial statistics, so a wrong fold shows.
    ours = backbones.efficientnet("efficientnet-b0", 64)
    rng = np.random.default_rng(0)
    for layer in ours.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, variance.shape)])
    handwritten = handwritten_efficientnet.handwritten_efficientnet_b0(64)
    handwritten_efficientnet.fold_weights(handwritten, ours)
    assert not any(isinstance(layer, (tf.keras.layers.BatchNormalization,
                                      tf.keras.layers.ZeroPadding2D))
                   for layer in handwritten.layers)
    images = tf.random.uniform([2, 64, 64, 3], -1.0, 1.0, seed=3)
    for expected, got in zip(ours(images, training=False), handwritten(images)):
        scale = np.abs(expected.numpy()).max()
        np.testing.assert_allclose(got.numpy() / scale, expected.numpy() / scale, atol=1e-4)
    assert handwritten.count_params() < ours.count_params()     # no batch-norm statistics


def test_median_times_alternate_and_give_medians(monkeypatch):
    calls = []
    clock = iter(range(1000))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: float(next(clock)))

    def fn(name):
        return lambda images: calls.append(name) or tf.constant(0.0)

    seconds = benchmark.median_times({"a": (fn("a"), None), "b": (fn("b"), None)},
                                     rounds=3, warmup=1, slow=["b"], slow_rounds=1)
    # One untimed call each, one warm-up round, then 3 rounds with "b" in the first only.
    assert calls == ["a", "b"] + ["a", "b"] + ["a", "b", "a", "a"]
    assert seconds == {"a": 1.0, "b": 1.0}   # each timed call spans one clock tick


def test_targets_report_what_is_met_and_the_margin_of_what_is_missed():
    lines = benchmark.target_lines({"speedup_vs_effnet_896": 3.2, "overhead_fmow_448_2": 0.95,
                                    "memory_vs_effnet_896": 0.42})
    assert len(lines) == 3
    assert lines[0].startswith("| overhead_fmow_448_2 ") and lines[0].endswith("| met |")
    assert "MISSED by 25.0 %" in lines[1]      # 4 / 3.2 - 1
    assert "MISSED by 20.0 %" in lines[2]      # 0.42 / 0.35 - 1


def test_level_batches_count_glimpses_per_image_at_each_level():
    assert benchmark.level_batches((2, 1)) == [1, 2, 2]
    assert benchmark.level_batches((1, 1, 1, 1)) == [1, 1, 1, 1, 1]
    assert benchmark.level_batches((4,)) == [1, 4]
    assert benchmark.level_batches((0,)) == [1]


def test_rows_round_trip_through_their_spec():
    for row in (benchmark.Row("tnet", "fmow", 896, (2, 1)), benchmark.Row("baseline", "fmow", 448)):
        assert benchmark.Row.from_spec(row.spec()) == row


@pytest.mark.slow
def test_a_smoke_run_writes_every_ratio_the_table_and_the_plot(tmp_path):
    path, plot = tmp_path / "bench.json", tmp_path / "scaling.png"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--smoke", "--rounds=2",
         "--memory_batch_size=4", f"--json={path}", f"--plot={plot}"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(path.read_text())
    for key, *_ in benchmark.TARGETS:
        assert payload["ratios"][key] > 0, key
        assert f"| {key} |" in result.stdout
    breakdown = ["backbone_by_level_3584_vs_448", "backbone_vs_handwritten_4B"] + [
        f"{part}_{key}" for part in ("by_level_vs_one_batch", "tnet_vs_by_level")
        for key in ("fmow_448_2", "fmow_896_2_1", "imagenet_3")]
    for key in ["xla_vs_default", "mixed_vs_float32", "keras_applications_vs_ours", *breakdown]:
        assert payload["ratios"][key] > 0, key
    # The hand-written network computes what ours does; XLA agrees with the default.
    assert float(payload["notes"]["handwritten_max_relative_difference"]) < 1e-4
    assert float(payload["notes"]["xla_vs_default_logit_difference"]) < 1e-4
    assert len(payload["scaling"]) == 8
    for entry in payload["scaling"]:
        assert entry["ms_per_image"] > 0 and entry["memory"]["peak_bytes"] > 0
    assert plot.stat().st_size > 10_000
