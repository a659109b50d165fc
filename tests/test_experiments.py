"""The dataset entry points: flags read into one run config, its validation,
and every stage end to end with smoke settings.

Stages are functions of a `RunConfig`, so most runs here are in-process
(`run_config.resolve` builds the config without flags); the command line
itself is checked in subprocesses, as a user would start it.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import digits
from experiments import run_config, stages
from conftest import RELEASE_FIXTURES, needs_release_fixtures

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
                  "hit_rate_l3_chance", "location_entropy_l2", "location_entropy_l3"]


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


def test_release_checkpoint_settings_are_checked_naming_the_flag(data_dir, tmp_path):
    from experiments.digits import ENTRY as DIGITS
    from experiments.fmow import ENTRY as FMOW

    weights = os.path.join(RELEASE_FIXTURES, "fmow_tnet")
    cases = [
        (FMOW, "evaluate", {"release_checkpoint": "/no/such/ckpt-1"},
         "--release_checkpoint: release checkpoint not found: /no/such/ckpt-1"),
        (FMOW, "train_448", {"release_checkpoint": weights},
         "--release_checkpoint: is read by --stage=evaluate, visualize or profile"),
        (DIGITS, "evaluate", {"release_checkpoint": weights, "checkpoint_stage": "mgnet_256"},
         "--release_checkpoint: mgnet_256 is an MGNet stage"),
        (FMOW, "visualize", {"release_checkpoint": weights, "checkpoint_stage": "baseline_224"},
         "--checkpoint_stage: baseline_224 is a baseline; visualize draws"),
    ]
    for entry, stage, options, message in cases:
        config = run_config.resolve(entry, stage, str(tmp_path), data_dir=data_dir, **options)
        with pytest.raises(run_config.FlagError) as error:
            run_config.validate(config)
        assert message in str(error.value)


@pytest.mark.slow
@needs_release_fixtures
def test_evaluate_from_release_weights_gives_the_release_models_accuracy(tmp_path):
    # fMoW test shards of the fixture images, labelled with the release TNet's own
    # predictions at 448 px [2]: --stage=evaluate --release_checkpoint must score 100 %
    # there, and at 896 px [2, 1] (and for the baseline) the accuracy that
    # release.load_model's predictions on the same pipeline images give.
    from experiments.fmow import ENTRY
    from tnet_tf import release
    from tnet_tf.data import pipeline, schema

    cases = np.load(os.path.join(RELEASE_FIXTURES, "fmow_cases.npz"))
    data = tmp_path / "data"
    data.mkdir()

    def write(labels):
        with tf.io.TFRecordWriter(str(data / schema.shard_name("test", 0, 1))) as writer:
            for i, image in enumerate(cases["images_448"]):
                jpeg = tf.io.encode_jpeg(image, quality=95).numpy()
                writer.write(schema.encode_example(jpeg, 448, 448, int(labels[i]), "c",
                                                   f"{i}.jpg"))

    def images(size):
        config = pipeline.input_config_for("fmow", file_pattern=str(data / "test-*"),
                                           image_size=size, batch_size=3, training=False)
        return next(iter(pipeline.make_dataset(config)))[0]

    write([0, 0, 0])
    tnet = release.load_model(os.path.join(RELEASE_FIXTURES, "fmow_tnet"), "fmow")
    outputs = {"2": tnet(images(448), locations=[2]), "2,1": tnet(images(896), locations=[2, 1])}
    labels = np.argmax(outputs["2"]["logits"], 1)
    at_896 = np.argmax(outputs["2,1"]["logits"], 1)
    baseline = release.load_model(os.path.join(RELEASE_FIXTURES, "fmow_baseline"), "fmow",
                                  model="baseline")
    at_224 = np.argmax(baseline(images(224)), 1)
    write(labels)

    def evaluate(**options):
        tf.keras.backend.clear_session()
        return stages.run(run_config.resolve(ENTRY, "evaluate", str(tmp_path / "run"),
                                             data_dir=str(data), **options))

    rows = evaluate(release_checkpoint=os.path.join(RELEASE_FIXTURES, "fmow_tnet"),
                    budgets=((2,), (2, 1)), export_attention=True)
    assert [(r["input_size"], r["locations"]) for r in rows] == [(448, [2]), (896, [2, 1])]
    assert rows[0]["top1"] == 100.0
    assert rows[1]["top1"] == pytest.approx(100.0 * np.mean(at_896 == labels))
    assert rows[0]["model"] == "TNet finetune_896 (release weights)"
    # The attended cells and their probabilities are the release model's.
    with open(tmp_path / "run" / "evaluate" / "attention.csv") as handle:
        lines = list(csv.DictReader(handle))
    for budget, output in outputs.items():
        attended = [line for line in lines if line["locations"] == budget]
        cells = output["cells"].numpy()
        probabilities = np.exp(output["location_log_probs"].numpy())
        assert len(attended) == cells.size
        for line in attended:
            image, feature = int(line["image"]), int(line["feature"])
            assert int(line["cell"]) == cells[image, feature - 1]
            assert float(line["probability"]) == pytest.approx(
                probabilities[image, feature - 1], abs=1e-5)
    [row] = evaluate(release_checkpoint=os.path.join(RELEASE_FIXTURES, "fmow_baseline"),
                     checkpoint_stage="baseline_224")
    assert row["top1"] == pytest.approx(100.0 * np.mean(at_224 == labels))
    assert row["input_size"] == 224 and row["gflops"] == pytest.approx(0.39, abs=0.01)
