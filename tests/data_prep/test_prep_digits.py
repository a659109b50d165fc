"""The cluttered-digits generator and its TFRecord writer."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data_prep import digits
from tnet_tf.data import schema


@pytest.fixture(scope="module")
def sources():
    return digits.load_sources()


def test_sources_are_the_bundled_scans_upscaled(sources):
    images, labels = sources
    assert images.shape == (1797, 16, 16) and labels.shape == (1797,)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(labels.tolist()) == set(range(10))


def test_canvas_holds_the_digit_in_its_box_among_clutter(sources):
    images, labels = sources
    for index in range(5):
        image, label, box = digits.canvas_example("train", index, 7, images, labels)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
        _, chosen = digits._canvas_rng("train", index, 7)
        assert 0 <= chosen < 1400 and label == labels[chosen]
        y, x = int(box[0] * 256), int(box[1] * 256)
        assert box[2] * 256 - y == 16 and box[3] * 256 - x == 16
        window = image[y:y + 16, x:x + 16, 0] / 255.0
        digit = images[chosen]
        # Max-pasting never hides the digit; noise (sigma 0.05) moves pixels a little.
        ink = digit > 0.5
        assert np.mean(window[ink] >= digit[ink] - 0.15) > 0.95
        outside = (image[..., 0] / 255.0 > 0.5).sum() - (window > 0.5).sum()
        assert outside > 16 * 6   # 16 fragments with ink (6-10 px crops)


def test_test_canvases_draw_only_unseen_digits():
    for index in range(50):
        rng, chosen = digits._canvas_rng("test", index, 0)
        assert 1400 <= chosen < 1797


def test_canvases_are_deterministic_per_seed_and_index(sources):
    a = digits.canvas_example("train", 3, 1, *sources)
    b = digits.canvas_example("train", 3, 1, *sources)
    c = digits.canvas_example("train", 4, 1, *sources)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert not np.array_equal(a[0], c[0])


def test_write_split_round_trip_and_rerun(tmp_path, sources):
    report = digits.write_split(str(tmp_path), "test", 12, 3, seed=5)
    files = sorted(glob.glob(str(tmp_path / "test-*-of-00003")))
    assert len(files) == 3 and not glob.glob(str(tmp_path / "*.incomplete"))
    records = [schema.parse_example(r) for r in tf.data.TFRecordDataset(files)]
    assert len(records) == 12
    for index, record in enumerate(records):
        image, label, box = digits.canvas_example("test", index, 5, *sources)
        assert int(record["label"]) == label
        np.testing.assert_allclose(record["boxes"].numpy(), [box], atol=1e-6)
        decoded = tf.io.decode_jpeg(record["encoded"], channels=3).numpy().astype(float)
        assert np.mean(np.abs(decoded - image)) < 4.0   # JPEG quality 95
    assert sum(report["images_per_class"]) == 12
    assert json.load(open(tmp_path / "test_report.json"))["images_per_class"] == \
        report["images_per_class"]
    # A rerun skips finished shards and rewrites a missing one byte for byte.
    before = [open(f, "rb").read() for f in files]
    stamp = os.path.getmtime(files[0])
    os.remove(files[1])
    digits.write_split(str(tmp_path), "test", 12, 3, seed=5)
    assert os.path.getmtime(files[0]) == stamp
    assert [open(f, "rb").read() for f in files] == before


def test_worker_processes_write_the_same_shards(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    digits.write_split(str(one), "train", 12, 3, seed=2)
    digits.write_split(str(two), "train", 12, 3, seed=2, workers=2, progress=True)
    for name in sorted(os.listdir(one)):
        assert open(one / name, "rb").read() == open(two / name, "rb").read()


def test_bad_shard_count_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="shards"):
        digits.write_split(str(tmp_path), "train", 2, 5, seed=0)


def test_samples_are_the_test_canvases_as_png_files(sources, tmp_path):
    images, labels = sources
    paths = digits.write_samples(str(tmp_path), 3)
    assert len(paths) == 3
    for index, path in enumerate(paths):
        expected, label, _ = digits.canvas_example("test", index, 0, images, labels)
        assert os.path.basename(path) == f"test_{index:06d}_digit{label}.png"
        np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(path)).numpy(), expected)
