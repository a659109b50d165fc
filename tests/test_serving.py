"""Use on your own images: `experiments.predict` on files of every kind and
size, and the SavedModel of `experiments.export` loaded in a process that
never imports tnet_tf, both against the Keras model they come from."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep import fmow
from experiments import export, predict, run_config, stages
from tnet_tf import budget, serving
from conftest import RELEASE_FIXTURES, needs_release_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    """A trained tiny TNet: the digits demo's two TNet stages with --smoke
    (32 px base, 3x3 grid of 50 % cells; finetune_256 at 128 px, [2, 1])."""
    from experiments.digits import ENTRY
    folder = tmp_path_factory.mktemp("digits_run")
    for stage in ("train_128", "finetune_256"):
        tf.keras.backend.clear_session()
        stages.run(run_config.resolve(ENTRY, stage, str(folder), smoke=True))
    return str(folder / "finetune_256")


def smooth_rgb(height, width, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], [height, width])[0].numpy()
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


# name -> (bytes, width, height); every kind of file the issue names.
def user_files():
    rgb = lambda h, w, seed: Image.fromarray(smooth_rgb(h, w, seed))  # noqa: E731
    whole = encoded(rgb(120, 90, 4), "JPEG")
    return {
        "a_rgba.png": (encoded(rgb(150, 200, 1).convert("RGBA"), "PNG"), 200, 150),
        "b_gray.jpg": (encoded(rgb(160, 160, 2).convert("L"), "JPEG"), 160, 160),
        "c_cmyk.jpg": (encoded(rgb(180, 140, 3).convert("CMYK"), "JPEG"), 140, 180),
        "d_tiny.bmp": (encoded(rgb(30, 30, 5), "BMP"), 30, 30),
        "e_wide.jpg": (encoded(rgb(1000, 3000, 6), "JPEG"), 3000, 1000),
        "f_small.gif": (encoded(rgb(50, 70, 7), "GIF"), 70, 50),
        "g_truncated.jpg": (whole[:len(whole) // 2], None, None),
    }


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_images")
    for name, (data, _, _) in user_files().items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image")     # left out: no image extension
    return folder


def test_budgets_are_cut_to_the_levels_an_image_reaches():
    assert budget.fit((2, 1), 3) == (2, 1)
    assert budget.fit((2, 1), 2) == (2,)
    assert budget.fit((2, 1), 1) == (0,)
    assert budget.fit((0,), 1) == (0,)


def test_predict_classifies_every_readable_file_and_reports_the_rest(stage_dir, image_dir,
                                                                     tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "experiments.predict", f"--model_dir={stage_dir}",
         f"--images={image_dir}", f"--output_dir={out}", "--figures", "--top_k=10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" in result.stdout and "g_truncated.jpg" in result.stdout
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    files = user_files()
    assert [os.path.basename(line["file"]) for line in lines] == sorted(files)

    model, recipe, config = stages.restore_stage(stage_dir)
    assert recipe.input_size == 128 and recipe.locations == (2, 1)
    with open(os.path.join(stage_dir, "class_names.json")) as handle:   # saved by training
        assert json.load(handle) == [str(d) for d in range(10)]
    for line in lines:
        name = os.path.basename(line["file"])
        data, width, height = files[name]
        if width is None:
            assert "cannot decode the image" in line["error"]
            continue
        assert (line["width"], line["height"]) == (width, height)
        # 32 px base: 30 px reaches 1 level, 50 px 2, 128 px (the input) 3.
        expected = {"d_tiny.bmp": [0], "f_small.gif": [2]}.get(name, [2, 1])
        assert line["locations"] == expected and line["requested_locations"] == [2, 1]
        assert (line["note"] is None) == (expected == [2, 1])
        # A second path: the model on the decoded, resized image, softmax in numpy.
        image = serving.preprocess(serving.decode_image(data), 128)[None]
        outputs = model(image, locations=expected, training=False)
        logits = outputs["logits"].numpy()[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        # --top_k=10: every class, most probable first, named, summing to 1.
        listed = [t["probability"] for t in line["top"]]
        assert listed == sorted(listed, reverse=True)
        assert sum(listed) == pytest.approx(1.0, abs=1e-5)
        assert sorted(t["class"] for t in line["top"]) == list(range(10))
        assert all(t["name"] == str(t["class"]) for t in line["top"])    # the digits
        by_class = {t["class"]: t["probability"] for t in line["top"]}
        np.testing.assert_allclose([by_class[k] for k in range(10)], probabilities, atol=1e-5)
        assert len(line["levels"]) == budget.levels_needed(expected)
        assert line["levels"][0]["boxes"] == [[0.0, 0.0, width, height]]
        assert line["levels"][0]["probabilities"] == [1.0]
        cell_probs = np.exp(outputs["location_log_probs"].numpy()[0])
        start = 0
        for level in line["levels"][1:]:
            boxes = np.array(level["boxes"])
            assert boxes.shape == (2, 4)       # [2]: 2 cells; [2, 1]: 1 cell under each
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width + 1e-3).all()
            assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height + 1e-3).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            fractions = outputs["boxes"][level["level"] - 1].numpy()[0]
            np.testing.assert_allclose(boxes, fractions[:, [1, 0, 3, 2]] *
                                       [width, height, width, height], rtol=1e-5)
            np.testing.assert_allclose(level["probabilities"], cell_probs[start:start + 2],
                                       rtol=1e-5)
            assert all(0.0 < p <= 1.0 for p in level["probabilities"])
            start += 2
    figures = sorted(os.listdir(out / "figures"))
    assert len(figures) == 6 and all(name.endswith(".png") for name in figures)
    for name in figures:
        shape = tf.io.decode_png(tf.io.read_file(str(out / "figures" / name))).shape
        assert max(shape[:2]) <= 2 * predict.FIGURE_MAX_SIDE and min(shape[:2]) > 20


def test_predict_exits_nonzero_only_with_strict(stage_dir, image_dir, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "experiments.predict", f"--model_dir={stage_dir}",
               f"--images={image_dir}/g_*", f"--output_dir={tmp_path}", "--strict"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1
    assert "skipped" in result.stdout and "classified 0 of 1" in result.stdout
    result = subprocess.run(command[:4] + [f"--images={tmp_path}/none*", command[5]], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "--images: no such file or folder, and no file matches" in result.stderr
    with pytest.raises(run_config.FlagError, match="holds no run.json"):
        predict.Predictor(str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "experiments.export", f"--model_dir={stage_dir}",
                             f"--export_dir={tmp_path}/export", "--budgets=2;2,1,1"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "error: --budgets: 128 px reaches 3 level(s); locations [2, 1, 1] need 4" in \
        result.stderr


LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, inputs, output = sys.argv[1:]
served = tf.saved_model.load(path)
data = np.load(inputs, allow_pickle=True)
results = {}
for signature, images in (("serving_images", tf.constant(data["pixels"])),
                          ("serving_default", tf.constant(list(data["encoded"])))):
    function = served.signatures[signature]
    for key, locations in (("2", [2]), ("2_1", [2, 1]), ("default", [])):
        out = function(images=images, locations=tf.constant(locations, tf.int32))
        for name, value in out.items():
            results[f"{signature}/{key}/{name}"] = value.numpy()
# The functions that take the budget or not.
for name, images in (("classify_images", tf.constant(data["pixels"])),
                     ("classify", tf.constant(list(data["encoded"])))):
    for key, args in (("2_1", (tf.constant([2, 1], tf.int32),)), ("default", ())):
        out = getattr(served, name)(images, *args)
        results[f"{name}/{key}/logits"] = out["logits"].numpy()
        results[f"{name}/{key}/boxes_level_3"] = out["boxes_level_3"].numpy()
try:
    served.signatures["serving_images"](images=tf.constant(data["pixels"]),
                                        locations=tf.constant([3], tf.int32))
    results["error"] = np.array("none")
except tf.errors.InvalidArgumentError as error:
    results["error"] = np.array(error.message)
assert not any(name.split(".")[0] in ("tnet_tf", "experiments") for name in sys.modules)
np.savez(output, **results)
"""


@pytest.mark.slow     # about 140 s on 2 cores: every budget's signature is traced and saved
def test_exported_savedmodel_serves_what_the_keras_model_computes(stage_dir, tmp_path):
    export_dir = str(tmp_path / "export")
    exported = export.export_stage(stage_dir, export_dir, budgets=[(2,), (2, 1)])
    assert exported["default"] == (2, 1) and exported["input_size"] == 128
    pictures = [smooth_rgb(128, 128, 10), smooth_rgb(200, 90, 11)]
    encoded_images = [tf.io.encode_png(p).numpy() for p in pictures]
    pixels = np.stack([serving.preprocess(p, 128).numpy() for p in pictures])
    inputs = str(tmp_path / "inputs.npz")
    np.savez(inputs, pixels=pixels, encoded=np.array(encoded_images, dtype=object))
    # A fresh process, without tnet_tf on its path or among its modules.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    result = subprocess.run([sys.executable, str(script), export_dir, inputs,
                             str(tmp_path / "out.npz")], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served = dict(np.load(tmp_path / "out.npz", allow_pickle=True))
    assert "exported budgets [2]; [2,1]" in str(served.pop("error"))

    model, _, _ = stages.restore_stage(stage_dir)
    for key, locations in (("2", [2]), ("2_1", [2, 1]), ("default", [2, 1])):
        outputs = model(pixels, locations=locations, training=False)
        for signature in ("serving_images", "serving_default"):
            prefix = f"{signature}/{key}/"
            np.testing.assert_allclose(served[prefix + "logits"], outputs["logits"].numpy(),
                                       atol=1e-5)
            for level in (1, 2, 3):
                boxes = served[prefix + f"boxes_level_{level}"]
                if level <= len(outputs["boxes"]):
                    np.testing.assert_allclose(boxes, outputs["boxes"][level - 1].numpy(),
                                               atol=1e-6)
                else:
                    assert boxes.shape == (2, 0, 4)
            probabilities = served[prefix + "probabilities"]
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
            top = served[prefix + "top_classes"]
            assert top.shape == (2, 5)
            np.testing.assert_array_equal(top[:, 0], probabilities.argmax(axis=1))
            names = served[prefix + "top_class_names"]
            assert [n.decode() for n in names[:, 0]] == [str(k) for k in top[:, 0]]
            level2 = served[prefix + "location_probs_level_2"]
            np.testing.assert_allclose(
                level2, np.exp(outputs["location_log_probs"].numpy()[:, :2]), rtol=1e-5)
        np.testing.assert_array_equal(served[f"serving_default/{key}/image_sizes"],
                                      [[128, 128], [200, 90]])
        if key != "2":
            for name in ("classify_images", "classify"):
                np.testing.assert_allclose(served[f"{name}/{key}/logits"],
                                           outputs["logits"].numpy(), atol=1e-5)
                np.testing.assert_allclose(served[f"{name}/{key}/boxes_level_3"],
                                           outputs["boxes"][2].numpy(), atol=1e-6)


@needs_release_fixtures
def test_predict_with_the_published_weights_gives_the_release_outputs(tmp_path):
    # A lossless fixture image through experiments.predict with the authors' fMoW TNet:
    # the release's own prediction, probabilities and attended cells at 448 px [2].
    cases = np.load(os.path.join(RELEASE_FIXTURES, "fmow_cases.npz"))
    buffer = io.BytesIO()
    Image.fromarray(cases["images_448"][1]).save(buffer, format="PNG")
    predictor = predict.Predictor(None, [2], input_size=448, top_k=3,
                                  release_checkpoint=os.path.join(RELEASE_FIXTURES, "fmow_tnet"),
                                  dataset="fmow")
    record, _, _ = predictor(buffer.getvalue())
    probabilities = tf.nn.softmax(cases["logits_448_2"][1]).numpy()
    top = np.argsort(-probabilities)[:3]
    assert [entry["class"] for entry in record["top"]] == list(top)
    np.testing.assert_allclose([entry["probability"] for entry in record["top"]],
                               probabilities[top], atol=1e-4)
    assert record["top"][0]["name"] == fmow.CLASSES[top[0]]
    cells = geometry_cells(record["levels"][1]["boxes"], 448)
    assert sorted(cells) == sorted(np.flatnonzero(cases["attended_448_2"][1]))
    with pytest.raises(run_config.FlagError, match="--model_dir: is required"):
        predict.Predictor(None)
    with pytest.raises(run_config.FlagError, match="--dataset: None: --release_checkpoint"):
        predict.Predictor(None, release_checkpoint=os.path.join(RELEASE_FIXTURES, "fmow_tnet"))
    with pytest.raises(run_config.FlagError, match="--release_checkpoint: release checkpoint "
                                                   "not found: /no/ckpt-1"):
        export.export_stage(None, str(tmp_path / "export"), release_checkpoint="/no/ckpt-1",
                            dataset="fmow")


def geometry_cells(boxes, size):
    """Row-major 3 x 3 cell indices of level-2 boxes [left, top, right, bottom] px."""
    return [int(round(top / (size / 4))) * 3 + int(round(left / (size / 4)))
            for left, top, _, _ in boxes]
