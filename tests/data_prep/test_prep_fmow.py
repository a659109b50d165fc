"""fMoW converter: a raw tree with every bad case, converted and read back exactly."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import raw_trees
from data_prep import fmow, shards
from data_prep.problems import BadInputError, ProblemLog
from tnet_tf.data import boxes as box_lib
from tnet_tf.data import schema

SHARDS = 3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def convert(root, out, split_names=("train", "val", "test"), workers=1, strict=False,
            bbox_crops=False, num_shards=SHARDS):
    splits = []
    for name in split_names:
        log = ProblemLog(strict)
        items = fmow.list_split(root, name, log)
        splits.append(shards.Split(name, fmow.PREFIXES[name], num_shards, fmow.CLASSES, items,
                                   log.problems, log.ignored))
    options = shards.Options(str(out), workers=workers, strict=strict, bbox_crops=bbox_crops,
                             max_min_dim=raw_trees.MAX_MIN_DIM, progress=False)
    return shards.convert(splits, options)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmow_raw")
    out = tmp_path_factory.mktemp("fmow_tfrecords")
    expected = raw_trees.make_fmow(str(root))
    reports = convert(str(root), out)
    return root, out, expected, reports


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_records_and_report_match_the_raw_tree(converted, split):
    root, out, expected, reports = converted
    files, records = raw_trees.read_records(out, fmow.PREFIXES[split])
    assert [os.path.basename(f) for f in files] == [
        schema.shard_name(fmow.PREFIXES[split], i, SHARDS) for i in range(SHARDS)]
    wanted = {name: s for name, s in expected.stored.items() if name.startswith(split + "/")}
    raw_trees.check_records(root, records, wanted, fmow.CLASSES)
    with open(out / f"{split}_report.json") as stream:
        assert json.load(stream) == reports[split]
    raw_trees.check_report(reports[split], expected.problems.get(split, []), wanted,
                           list(fmow.CLASSES), expected.ignored.get(split))


def test_no_temporary_files_left(converted):
    _, out, _, _ = converted
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_strict_mode_stops_at_the_first_bad_input_naming_it(tmp_path):
    raw_trees.make_fmow(str(tmp_path / "raw"))
    with pytest.raises(BadInputError, match="airport_0_1_rgb.json: missing JSON"):
        fmow.list_split(str(tmp_path / "raw"), "train", ProblemLog(strict=True))
    # A bad image is only found by the worker: the conversion stops there.
    zoo = tmp_path / "raw" / "val" / "park" / "park_0" / "park_0_0_rgb.jpg"
    zoo.write_bytes(raw_trees.bad_image("truncated", 1))
    with pytest.raises(BadInputError, match="park_0_0_rgb.jpg: truncated"):
        convert(str(tmp_path / "raw"), tmp_path / "out", ["val"], strict=True)


def test_bbox_crops_hold_each_box_with_its_context(converted, tmp_path):
    root, _, expected, _ = converted
    reports = convert(str(root), tmp_path, ["val"], bbox_crops=True, num_shards=2)
    _, records = raw_trees.read_records(tmp_path, "validation")
    assert reports["val"]["examples"] == len(records) == 4
    for name, record in records.items():
        source = name.split("#")[0]
        stored = expected.stored[source]
        assert name == source + "#box0" and record["label"] == stored.label
        pixels = tf.io.decode_jpeg((root / source).read_bytes(), channels=3)
        box = np.array(stored.boxes[0], np.float32)
        window = [int(v) for v in box_lib.pixel_window(box_lib.add_context(box),
                                                       *pixels.shape[:2])]
        crop = pixels[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]
        assert record["encoded"] == tf.io.encode_jpeg(crop, format="rgb", quality=95).numpy()
        inner = box_lib.box_in_window(box, window, *pixels.shape[:2]).numpy()
        np.testing.assert_array_equal(record["boxes"][0], inner)


def test_sigkill_and_rerun_equals_an_uninterrupted_run(tmp_path):
    root = tmp_path / "raw"
    raw_trees.make_fmow(str(root))
    reference = tmp_path / "reference"
    convert(str(root), reference, ["train"], num_shards=6)
    # One image is a FIFO: the worker that opens it blocks until the process is killed.
    blocked = root / "train" / "barn" / "barn_2" / "barn_2_1_rgb.jpg"
    content = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_prep.fmow", f"--input_dir={root}",
               f"--output_dir={out}", "--splits=train", "--train_shards=6", "--workers=2",
               f"--max_min_dim={raw_trees.MAX_MIN_DIM}", "--noprogress"]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    names = [schema.shard_name("train", i, 6) for i in range(6)]
    deadline = time.time() + 240
    while sum((out / n).exists() for n in names) < 5 and time.time() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = [n for n in names if (out / n).exists()]
    assert len(done) == 5 and not (out / "train_report.json").exists()
    mtimes = {n: (out / n).stat().st_mtime_ns for n in done}
    blocked.unlink()
    blocked.write_bytes(content)
    convert(str(root), out, ["train"], num_shards=6)
    assert {n: (out / n).stat().st_mtime_ns for n in done} == mtimes  # kept, not rewritten
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for path in files:
        assert (out / path).read_bytes() == (reference / path).read_bytes(), path
