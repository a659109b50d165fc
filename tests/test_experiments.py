"""The dataset entry points: flags read into one run config, its validation,
and every stage end to end with smoke settings.

Stages are functions of a `RunConfig`, so most runs here are in-process
(`run_config.resolve` builds the config without flags); the command line
itself is checked in subprocesses, as a user would start it.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import digits
from experiments import run_config, stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(entry, *args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", f"experiments.{entry}", *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{entry} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    spec = digits.CanvasSpec(canvas_size=128, clutter=4)
    digits.write_split(str(folder), "train", 16, 1, seed=0, spec=spec)
    digits.write_split(str(folder), "test", 8, 1, seed=0, spec=spec)
    return str(folder)


def error_line(result):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("entry, args, message", [
    ("fmow", ["--stage=train_448"], "--data_dir: is required"),
    ("fmow", ["--stage=train_448", "--data_dir=EMPTY"], "has no train-* shards"),
    ("fmow", ["--stage=finetune_896", "--data_dir=DATA"],
     "--init_checkpoint: MODEL/train_448/final does not exist; run --stage=train_448 first"),
    ("fmow", ["--stage=train_448", "--data_dir=DATA", "--input_size=224"],
     "--input_size: 224 px reaches 1 level(s); locations [2] need 2"),
    ("fmow", ["--stage=evaluate", "--data_dir=DATA"],
     "--checkpoint_stage: no final checkpoint of finetune_896"),
    ("cub", ["--stage=train", "--data_dir=DATA", "--pretrained=/no/such/weights.h5"],
     "--pretrained: pretrained weights file not found: /no/such/weights.h5"),
    ("nabirds", ["--stage=train", "--data_dir=DATA", "--backbone=b9"],
     "--backbone: 'b9' is not one of b0..b4"),
])
def test_bad_flags_stop_with_one_line_naming_the_flag(entry, args, message, data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    model_dir = str(tmp_path / "run")
    args = [a.replace("EMPTY", str(empty)).replace("DATA", data_dir) for a in args]
    line = error_line(run(entry, *args, f"--model_dir={model_dir}", check=False))
    assert message.replace("MODEL", model_dir) in line
    assert not os.path.exists(os.path.join(model_dir, "train_448", "final"))


def _drawn_pixels(path):
    pixels = tf.io.decode_png(tf.io.read_file(path), channels=3).numpy().astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    return pixels.shape, int(red.sum())


def _check_visualize(model_dir):
    figures = sorted(name for name in os.listdir(os.path.join(model_dir, "visualize"))
                     if name.endswith(".png"))
    assert len(figures) == 2
    for name in figures:
        shape, red = _drawn_pixels(os.path.join(model_dir, "visualize", name))
        assert shape[0] >= 128 and shape[1] >= 128 and red > 50   # level-2 boxes drawn


def _results(model_dir, stage):
    with open(os.path.join(model_dir, stage, "results.json")) as handle:
        return json.load(handle)


def _as_json(value):
    return json.loads(json.dumps(value, default=float))


def test_evaluation_sizes_come_from_the_stages_saved_runs(tmp_path):
    import dataclasses

    import tnet_tf
    from experiments import recipes

    config = tnet_tf.get_preset("fmow").to_dict()
    for stage, size in (("train_448", 320), ("finetune_896", 640)):   # not the recipes' sizes
        os.makedirs(tmp_path / stage)
        recipe = recipes.FMOW[stage].replace(input_size=size)
        with open(tmp_path / stage / "run.json", "w") as handle:
            json.dump({"recipe": dataclasses.asdict(recipe), "model_config": config}, handle)
    assert stages.trained_input_sizes(str(tmp_path), ["train_448", "finetune_896"]) == [320, 640]
    # A stage that never ran has no size.
    assert stages.trained_input_sizes(str(tmp_path), ["train_448", "baseline_224"]) == [320]
    recipe, _ = run_config.saved_run(str(tmp_path / "finetune_896"))
    assert recipe == recipes.FMOW["finetune_896"].replace(input_size=640)


def smoke(entry, stage, model_dir, **options):
    """Runs `stage` in-process with smoke settings; returns its result."""
    tf.keras.backend.clear_session()
    options.setdefault("num_images", 2)
    return stages.run(run_config.resolve(entry, stage, str(model_dir), smoke=True, **options))


def test_mgnet_stage_trains_evaluates_draws_and_profiles(tmp_path):
    from experiments.digits import ENTRY

    result = smoke(ENTRY, "mgnet_256", tmp_path)
    assert os.path.exists(result["checkpoint"] + "/checkpoint")
    with open(tmp_path / "mgnet_256" / "run.json") as handle:
        saved = json.load(handle)
    assert saved["model_config"]["glimpses"] == 4 and saved["model_config"]["glimpse_size"] == 32
    rows = smoke(ENTRY, "evaluate", tmp_path, checkpoint_stage="mgnet_256")
    assert _as_json(rows) == _results(tmp_path, "evaluate")
    assert [r["glimpses"] for r in rows] == [1, 2, 3, 4]
    gflops = [r["gflops"] for r in rows]
    assert gflops == sorted(gflops) and gflops[0] > 0
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows) and rows[0]["coverage"] == 0.0
    assert len(smoke(ENTRY, "visualize", tmp_path, checkpoint_stage="mgnet_256")) == 2
    _check_visualize(tmp_path)      # glimpse 2 is drawn in level 2's red
    row = smoke(ENTRY, "profile", tmp_path, checkpoint_stage="mgnet_256")
    assert row["glimpses"] == 4 and row["flops"] == pytest.approx(rows[-1]["gflops"] * 1e9)


@pytest.mark.slow
def test_every_fmow_stage_runs_with_smoke(tmp_path, capsys):
    from experiments.fmow import ENTRY

    model_dir = tmp_path / "fmow"
    smoke(ENTRY, "train_448", model_dir)
    smoke(ENTRY, "finetune_896", model_dir)
    assert "initialised from" in capsys.readouterr().out
    for stage in ("baseline_bbox", "baseline_224", "baseline_448", "baseline_896"):
        row, = smoke(ENTRY, stage, model_dir)["rows"]
        assert _as_json(row) == _results(model_dir, stage)[0]
        assert 0.0 <= row["top1"] <= 100.0 and row["gflops"] > 0
    # Evaluate's own input_size / locations must not resize the trained stages.
    rows = smoke(ENTRY, "evaluate", model_dir, export_attention=True,
                 recipe_changes={"input_size": 224, "locations": (1,)})
    assert _as_json(rows) == _results(model_dir, "evaluate")
    assert [r["locations"] for r in rows] == [[0], [1], [2], [3], [2, 1], [2, 2]]
    assert [r["input_size"] for r in rows] == [64, 64, 64, 64, 128, 128]
    gflops = [r["gflops"] for r in rows]
    assert gflops == sorted(gflops) and gflops[0] < gflops[-1]
    assert rows[1]["coverage_level2"] == pytest.approx(25.0)
    for suffix in ("results.md", "results.csv", "attention.csv", "accuracy_vs_gflops.png"):
        assert os.path.getsize(os.path.join(model_dir, "evaluate", suffix)) > 0
    assert len(smoke(ENTRY, "visualize", model_dir)) == 2
    _check_visualize(model_dir)
    row = smoke(ENTRY, "profile", model_dir)
    with open(os.path.join(model_dir, "profile", "profile.json")) as handle:
        assert json.load(handle) == [_as_json(row)]
    assert row["params"] > 0 and row["ms_per_image"] > 0
    assert os.listdir(os.path.join(model_dir, "profile", "trace"))
    # Every stage saved the run it was given.
    with open(os.path.join(model_dir, "finetune_896", "run.json")) as handle:
        saved = json.load(handle)
    assert (saved["dataset"], saved["stage"], saved["smoke"]) == ("fmow", "finetune_896", True)
    assert saved["recipe"]["init_from"] == "train_448"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet", "cub", "nabirds"])
def test_every_stage_of_the_other_entry_points_runs_with_smoke(name, tmp_path):
    import importlib

    entry = importlib.import_module(f"experiments.{name}").ENTRY
    for stage in ("train", "baseline", "evaluate", "visualize", "profile"):
        smoke(entry, stage, tmp_path)
    rows = _results(tmp_path, "evaluate")
    assert len(rows) >= 4 and all(np.isfinite(r["top1"]) for r in rows)
    _check_visualize(tmp_path)


@pytest.mark.slow
def test_a_stage_trains_xla_compiled_in_bfloat16(tmp_path):
    from experiments.digits import ENTRY

    try:
        result = smoke(ENTRY, "train_128", tmp_path, jit_compile=True,
                       mixed_precision="mixed_bfloat16")
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert os.path.exists(result["checkpoint"] + "/checkpoint")
    with open(tmp_path / "train_128" / "run.json") as handle:
        saved = json.load(handle)
    assert (saved["jit_compile"], saved["mixed_precision"]) == (True, "mixed_bfloat16")


@pytest.mark.slow
def test_digits_generates_its_data_and_runs_every_stage(tmp_path):
    import dataclasses
    import functools

    from experiments import digits as demo

    entry = dataclasses.replace(demo.ENTRY,
                                generate_data=functools.partial(demo.generate, sizes=(16, 8)))
    stages.run(run_config.resolve(entry, "profile", str(tmp_path)))
    assert len(os.listdir(tmp_path / "data")) >= 4   # shards and reports
    with open(tmp_path / "data" / "train_report.json") as handle:
        assert json.load(handle)["images"] == 16
    for stage in ("train_128", "finetune_256", "baseline_64", "mgnet_256", "evaluate",
                  "visualize"):
        smoke(entry, stage, tmp_path)
    rows = _results(tmp_path, "evaluate")
    assert [r["locations"] for r in rows] == [[0], [1], [2], [2, 1], [2, 2]]
    _check_visualize(tmp_path)


DIGITS_COLUMNS = ["model", "input_size", "locations", "glimpses", "accuracy", "gflops", "ms_per_image",
                  "full_res_percent", "hit_rate_l2", "hit_rate_l2_chance", "hit_rate_l3",
                  "hit_rate_l3_chance"]


@pytest.mark.slow
def test_digits_quick_demo_runs_end_to_end_and_resumes(tmp_path):
    out = str(tmp_path / "demo")
    tiny = ["--quick", f"--output_dir={out}", "--train_size=32", "--test_size=16",
            "--steps_per_epoch=2", "--epochs=1"]
    first = run("digits", *tiny)
    assert "[1/5] train_128" in first.stdout and "[5/5] report" in first.stdout
    assert "about 0:00:0" in first.stdout          # the time left after each epoch
    with open(os.path.join(out, "results.json")) as handle:
        rows = json.load(handle)
    assert [(r["model"], r["input_size"], r["locations"], r.get("glimpses")) for r in rows] == [
        ("TNet", 128, [0], None), ("TNet", 128, [1], None), ("TNet", 128, [2], None),
        ("TNet", 256, [2, 1], None), ("TNet", 256, [2, 2], None),
        ("baseline 64 px", 64, None, None)] + [("MGNet", 256, None, t) for t in (1, 2, 3, 4)]
    for row in rows:
        assert set(DIGITS_COLUMNS[:8]) - {"locations", "glimpses"} <= set(row)
        assert 0.0 <= row["accuracy"] <= 100.0 and row["gflops"] > 0 and row["ms_per_image"] > 0
    tnet = {tuple(r["locations"]): r for r in rows if r["locations"] is not None}
    assert tnet[(0,)]["gflops"] < tnet[(1,)]["gflops"] < tnet[(2,)]["gflops"]
    assert tnet[(2, 1)]["gflops"] < tnet[(2, 2)]["gflops"]
    assert "hit_rate_l2" not in tnet[(0,)] and 0.0 < tnet[(2,)]["hit_rate_l2_chance"] < 100.0
    assert 0.0 <= tnet[(2, 1)]["hit_rate_l3"] <= 100.0
    # Only level 3 at 256 px sees canvas pixels one to one: 2 cells of 1/16 of the canvas.
    assert [r["full_res_percent"] for r in rows[:3]] == [0.0, 0.0, 0.0]
    assert 6.25 <= tnet[(2, 1)]["full_res_percent"] <= 12.5
    assert rows[5]["full_res_percent"] == 0.0 and "hit_rate_l2" not in rows[5]
    mgnet = rows[6:]
    assert [r["gflops"] for r in mgnet] == sorted(r["gflops"] for r in mgnet)
    assert mgnet[0]["full_res_percent"] == 0.0 and all(
        0.0 <= r["full_res_percent"] <= r["coverage"] + 1e-9 for r in mgnet)
    with open(os.path.join(out, "results.md")) as handle:
        table = handle.read().splitlines()
    assert table[0] == "| " + " | ".join(DIGITS_COLUMNS) + " |" and len(table) == 2 + 10
    for name, size in (("accuracy_vs_gflops.png", (480, 720)), ("attention.png", (1320, 1200)),
                       ("attention_mgnet_256.png", (1320, 1200))):
        pixels = tf.io.decode_png(tf.io.read_file(os.path.join(out, name))).numpy()
        assert pixels.shape[:2] == size
    # A rerun keeps every finished stage and only reports again.
    again = run("digits", *tiny)
    assert again.stdout.count("finished in an earlier run, kept") == 4
    # Data of another size in the same folder is a clear error.
    error = error_line(run("digits", *tiny[:2], "--train_size=48", check=False))
    assert "--train_size:" in error and "holds 32 train canvases, not 48" in error
