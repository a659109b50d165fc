"""Small raw dataset trees in the real layouts, with real JPEGs and every bad case.

Each builder returns an `Expected`: what the converter must write (label,
boxes, how the stored bytes relate to the raw file) and which problems the
report must list.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

MAX_MIN_DIM = 48  # small cap so that a few test images get downscaled


@dataclasses.dataclass
class Stored:
    label: int
    boxes: List[Tuple[float, float, float, float]]   # normalised ymin, xmin, ymax, xmax
    mode: str = "raw"       # "raw": bytes kept; "converted": RGB JPEG of the decoded raw file;
                            # "downscaled": resized to shorter side MAX_MIN_DIM
    box_labels: Optional[List[int]] = None   # None: every box has the image's label

    def labels_of_boxes(self) -> List[int]:
        return self.box_labels if self.box_labels is not None else [self.label] * len(self.boxes)


@dataclasses.dataclass
class Expected:
    stored: Dict[str, Stored] = dataclasses.field(default_factory=dict)   # by image/filename
    # (file, reason substring, action) per split
    problems: Dict[str, List[Tuple[str, str, str]]] = dataclasses.field(default_factory=dict)
    # files left out by design per split: {reason: count}
    ignored: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)

    def problem(self, split, file, reason, action):
        self.problems.setdefault(split, []).append((file, reason, action))

    def ignore(self, split, reason):
        counts = self.ignored.setdefault(split, {})
        counts[reason] = counts.get(reason, 0) + 1


def pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (so JPEG round trips are well behaved)."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, size=(4, 4, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], [height, width], method="bilinear")[0]
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def jpeg(height: int, width: int, seed: int) -> bytes:
    return tf.io.encode_jpeg(pixels(height, width, seed), quality=90).numpy()


def write(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    with open(path, mode) as stream:
        stream.write(data)


def bad_image(kind: str, seed: int) -> bytes:
    """'png', 'cmyk', 'grayscale' (converted), 'truncated', 'garbage' (skipped)."""
    array = pixels(30, 40, seed)
    if kind == "png":
        return tf.io.encode_png(array).numpy()
    if kind == "cmyk":
        buffer = io.BytesIO()
        Image.fromarray(array).convert("CMYK").save(buffer, "JPEG", quality=90)
        return buffer.getvalue()
    if kind == "grayscale":
        return tf.io.encode_jpeg(array[..., :1], quality=90).numpy()
    if kind == "truncated":
        data = jpeg(30, 40, seed)
        return data[:len(data) // 2]
    if kind == "garbage":
        return b"this is not an image at all" * 10
    raise ValueError(kind)


def normalised(x, y, w, h, width, height):
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    return (y0 / height, x0 / width, y1 / height, x1 / width)


FMOW_TRAIN = ("airport", "barn", "zoo")
FMOW_LABELS = {"airport": 0, "barn": 6, "zoo": 61, "park": 33, "dam": 12}


def write_msrgb(root: str, rgb_stem: str, seed: int, expected: Expected) -> None:
    """The multispectral render real fMoW-rgb folders hold beside an image
    (`<stem>_msrgb.jpg` + .json, smaller): never converted, counted as ignored."""
    from data_prep import fmow

    stem = rgb_stem[:-len("_rgb")] + "_msrgb"
    write(f"{root}/{stem}.jpg", jpeg(20, 24, seed))
    write(f"{root}/{stem}.json", json.dumps({"bounding_boxes": [{"box": [1, 1, 4, 4]}]}))
    for _ in range(2):
        expected.ignore(stem.split("/")[0], fmow.MSRGB_REASON)


def make_fmow(root: str) -> Expected:
    """train: 3 classes x 3 instances x 2 images + bad cases; val: 4; test via mapping."""
    expected = Expected()
    seed = 0
    for category in FMOW_TRAIN:
        for n in range(3):
            for k in range(2):
                seed += 1
                stem = f"train/{category}/{category}_{n}/{category}_{n}_{k}_rgb"
                height, width = 32 + 2 * n, 40 + 4 * k
                write(f"{root}/{stem}.jpg", jpeg(height, width, seed))
                box = [3 + n, 4, 12, 9 + k]
                write(f"{root}/{stem}.json", json.dumps(
                    {"bounding_boxes": [{"box": box, "category": category, "ID": seed}],
                     "img_width": width, "img_height": height}))
                expected.stored[f"{stem}.jpg"] = Stored(
                    FMOW_LABELS[category], [normalised(*box, width, height)])
                write_msrgb(root, stem, 500 + seed, expected)
    # Bad metadata (the image itself is fine).
    os.remove(f"{root}/train/airport/airport_0/airport_0_1_rgb.json")
    expected.stored["train/airport/airport_0/airport_0_1_rgb.jpg"].boxes = []
    expected.problem("train", "train/airport/airport_0/airport_0_1_rgb.json",
                     "missing JSON", "image stored without boxes")
    write(f"{root}/train/airport/airport_1/airport_1_0_rgb.json", '{"bounding_boxes": [{"box"')
    expected.stored["train/airport/airport_1/airport_1_0_rgb.jpg"].boxes = []
    expected.problem("train", "train/airport/airport_1/airport_1_0_rgb.json",
                     "malformed JSON", "image stored without boxes")
    # Boxes: single object; partly outside (clipped); wholly outside, zero size, tiny,
    # unknown category, malformed (dropped).
    stem = "train/barn/barn_0/barn_0_0_rgb"  # 32 x 40 image
    write(f"{root}/{stem}.json", json.dumps({"bounding_boxes": {"box": [30, 20, 20, 20],
                                                                "category": "barn"}}))
    expected.stored[f"{stem}.jpg"].boxes = [normalised(30, 20, 20, 20, 40, 32)]
    expected.problem("train", f"{stem}.json", "single object", "read as a list")
    expected.problem("train", f"{stem}.json", "extends outside", "box clipped")
    stem = "train/barn/barn_1/barn_1_0_rgb"  # 34 x 40 image
    write(f"{root}/{stem}.json", json.dumps({"bounding_boxes": [
        {"box": [100, 100, 10, 10], "category": "barn"},
        {"box": [5, 5, 0, 10], "category": "barn"},
        {"box": [5, 5, 2, 10], "category": "barn"},
        {"box": [5, 5, 10, 10], "category": "not_a_class"},
        {"box": [5, 5, 10], "category": "barn"},
        {"box": [1, 2, 20, 30], "category": "zoo"}]}))
    expected.stored[f"{stem}.jpg"].boxes = [normalised(1, 2, 20, 30, 40, 34)]
    for reason in ("outside the", "zero-size", "tiny box", "unknown category", "malformed"):
        expected.problem("train", f"{stem}.json", reason, "box dropped")
    expected.stored[f"{stem}.jpg"].box_labels = [FMOW_LABELS["zoo"]]  # a zoo box in a barn image
    # Bad images: converted or skipped.
    for kind, category, n, k in (("png", "zoo", 0, 0), ("cmyk", "zoo", 0, 1),
                                 ("grayscale", "zoo", 1, 0), ("truncated", "zoo", 1, 1),
                                 ("garbage", "zoo", 2, 0)):
        stem = f"train/{category}/{category}_{n}/{category}_{n}_{k}_rgb"
        write(f"{root}/{stem}.jpg", bad_image(kind, 100 + n))
        write(f"{root}/{stem}.json", json.dumps(
            {"bounding_boxes": [{"box": [2, 3, 10, 11], "category": category}]}))
        if kind in ("truncated", "garbage"):
            del expected.stored[f"{stem}.jpg"]
            reason = "truncated" if kind == "truncated" else "not an image"
            expected.problem("train", f"{stem}.jpg", reason, "skipped")
        else:
            expected.stored[f"{stem}.jpg"] = Stored(FMOW_LABELS[category],
                                                    [normalised(2, 3, 10, 11, 40, 30)],
                                                    "converted")
            reason = {"png": "PNG image", "cmyk": "CMYK", "grayscale": "grayscale"}[kind]
            expected.problem("train", f"{stem}.jpg", reason, "converted")
    # A large image (shorter side > MAX_MIN_DIM) is downscaled; boxes are unaffected.
    stem = "train/zoo/zoo_2/zoo_2_1_rgb"
    write(f"{root}/{stem}.jpg", jpeg(60, 90, 7))
    write(f"{root}/{stem}.json", json.dumps(
        {"bounding_boxes": [{"box": [10, 20, 30, 15], "category": "zoo"}]}))
    expected.stored[f"{stem}.jpg"] = Stored(61, [normalised(10, 20, 30, 15, 90, 60)],
                                            "downscaled")
    # An unknown category folder.
    stem = "train/not_a_class/not_a_class_0/not_a_class_0_0_rgb"
    write(f"{root}/{stem}.jpg", jpeg(30, 30, 8))
    write(f"{root}/{stem}.json", json.dumps({"bounding_boxes": []}))
    expected.problem("train", f"{stem}.jpg", "unknown category", "skipped")
    # val: clean.
    for category, n in (("park", 0), ("park", 1), ("dam", 0), ("dam", 1)):
        stem = f"val/{category}/{category}_{n}/{category}_{n}_0_rgb"
        write(f"{root}/{stem}.jpg", jpeg(36, 44, 200 + n))
        write(f"{root}/{stem}.json", json.dumps(
            {"bounding_boxes": [{"box": [4, 5, 20, 21], "category": category}]}))
        expected.stored[f"{stem}.jpg"] = Stored(FMOW_LABELS[category],
                                                [normalised(4, 5, 20, 21, 44, 36)])
        write_msrgb(root, stem, 550 + n, expected)
    _make_fmow_test(root, expected)
    return expected


def _make_fmow_test(root: str, expected: Expected) -> None:
    mapping = []
    for index, (category, n) in enumerate((("park", 0), ("zoo", 3), ("dam", 2))):
        test_id = f"{index:07d}"
        mapping.append({"input": f"test_gt/{category}/{category}_{n}", "output": f"test/{test_id}"})
        for k in range(2):
            image = f"test/{test_id}/{test_id}_{k}_rgb.jpg"
            write(f"{root}/{image}", jpeg(38, 42, 300 + 2 * index + k))
            write(f"{root}/test/{test_id}/{test_id}_{k}_rgb.json",
                  json.dumps({"bounding_boxes": [{"box": [1, 1, 5, 5]}]}))
            truth = f"test_gt/{category}/{category}_{n}/{category}_{n}_{k}_rgb.json"
            box = [2 + k, 3, 15, 16]
            write(f"{root}/{truth}", json.dumps(
                {"bounding_boxes": [{"box": box, "category": category}]}))
            expected.stored[image] = Stored(FMOW_LABELS[category], [normalised(*box, 42, 38)])
            write_msrgb(root, image[:-len(".jpg")], 600 + 2 * index + k, expected)
    # Missing ground truth JSON for one image: stored without boxes.
    os.remove(f"{root}/test_gt/zoo/zoo_3/zoo_3_1_rgb.json")
    expected.stored["test/0000001/0000001_1_rgb.jpg"].boxes = []
    expected.problem("test", "test_gt/zoo/zoo_3/zoo_3_1_rgb.json", "missing JSON",
                     "image stored without boxes")
    # An entry pointing outside the root, one to a missing folder, and an unmapped image.
    write(f"{root}/test/0000009/0000009_0_rgb.jpg", jpeg(30, 30, 400))
    mapping.append({"input": "test_gt/zoo/zoo_9", "output": "../../outside/0000009"})
    mapping.append({"input": "test_gt/park/park_7", "output": "test/7777777"})
    expected.problem("test", "test_gt_mapping.json entry #3", "outside the dataset root",
                     "skipped")
    expected.problem("test", "test_gt_mapping.json entry #4", "does not exist", "skipped")
    expected.problem("test", "test/0000009/0000009_0_rgb.jpg", "no ground truth", "skipped")
    write(f"{root}/test_gt_mapping.json", json.dumps(mapping))


def expected_bytes(raw: bytes, mode: str) -> Optional[bytes]:
    """The exact stored JPEG for "raw" and "converted" items (None for "downscaled")."""
    if mode == "raw":
        return raw
    if mode == "converted":
        decoded = tf.io.decode_image(raw, channels=3, expand_animations=False)
        return tf.io.encode_jpeg(decoded, format="rgb", quality=95).numpy()
    return None


def read_records(out, prefix):
    """(shard paths, {filename: parsed record}) of the shards `<prefix>-*` in `out`."""
    from tnet_tf.data import schema

    files = sorted(tf.io.gfile.glob(os.path.join(str(out), f"{prefix}-*")))
    records = {}
    for record in tf.data.TFRecordDataset(files):
        example = {k: v.numpy() for k, v in schema.parse_example(record).items()}
        records[example["filename"].decode()] = example
    return files, records


def check_records(root, records, wanted: Dict[str, Stored], class_names) -> None:
    """Labels, texts, boxes and bytes (or pixels, for downscaled images) exactly as expected."""
    assert sorted(records) == sorted(wanted)
    for name, stored in wanted.items():
        record = records[name]
        assert record["label"] == stored.label, name
        assert record["text"].decode() == class_names[stored.label]
        np.testing.assert_array_equal(record["boxes"],
                                      np.array(stored.boxes, np.float32).reshape(-1, 4))
        assert record["box_labels"].tolist() == stored.labels_of_boxes()
        raw = open(os.path.join(str(root), name), "rb").read()
        image = tf.io.decode_jpeg(record["encoded"]).numpy()
        assert image.shape == (record["height"], record["width"], 3)
        if stored.mode == "downscaled":
            assert min(image.shape[:2]) == MAX_MIN_DIM
            original = tf.io.decode_jpeg(raw, channels=3)
            resized = tf.image.resize(original, image.shape[:2], antialias=True).numpy()
            assert np.abs(resized - image).mean() < 3.0
        else:
            assert record["encoded"] == expected_bytes(raw, stored.mode), name


def check_report(report, wanted_problems, stored: Dict[str, Stored], class_names,
                 ignored: Optional[Dict[str, int]] = None) -> None:
    """Every expected problem listed (and no other), the files ignored by
    design counted apart; images and boxes per class."""
    assert report["ignored"] == (ignored or {})
    listed = report["skipped"] + report["fixed"]
    assert len(listed) == len(wanted_problems), listed
    for file, reason, action in wanted_problems:
        assert any(p["file"] == file and reason in p["reason"] and p["action"] == action
                   for p in listed), (file, reason, action, listed)
    assert report["images"] == report["examples"] == len(stored)
    for name, counts in report["classes"].items():
        label = class_names.index(name)
        assert counts["label"] == label
        assert counts["images"] == sum(s.label == label for s in stored.values())
        assert counts["boxes"] == sum(s.labels_of_boxes().count(label) for s in stored.values())
    assert sum(c["images"] for c in report["classes"].values()) == len(stored)
