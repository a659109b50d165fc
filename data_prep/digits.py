"""Cluttered handwritten digits on a large canvas: the project's embedded dataset.

A miniature of the fMoW situation (a small object somewhere in a big image)
built from scikit-learn's bundled real digit scans (1,797 8x8 images):
each 256 x 256 canvas holds one digit upscaled to 16 x 16 px at a uniformly
random position, 16 clutter fragments (6-10 px crops with ink of other
digits) pasted by element-wise max, and Gaussian noise (sigma 0.05 on
[0, 1]). The label is the digit's class; its box is stored as the object box.
Train canvases use source digits 0-1399, test canvases 1400-1796.

    python -m data_prep.digits --output_dir=/data/digits
    python -m data_prep.digits --output_dir=/tmp/digits --train_size=512 --test_size=128

Canvas i of a split depends only on (seed, split, i): output is the same for
any shard count or rerun. Shards are written to a temporary name and renamed
when complete; a rerun skips finished shards.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from data_prep import beam, shards as shards_lib
from tnet_tf.data import schema

SPLITS = {"train": (0, 1400), "test": (1400, 1797)}
SPLIT_IDS = {"train": 0, "test": 1}
SHARD_PREFIX = {"train": "train", "test": "test"}
CLASS_NAMES = tuple(str(digit) for digit in range(10))   # label d is the digit d


@dataclasses.dataclass(frozen=True)
class CanvasSpec:
    canvas_size: int = 256
    digit_size: int = 16
    clutter: int = 16
    fragment_sizes: Tuple[int, int] = (6, 10)
    noise: float = 0.05
    min_fragment_ink: float = 0.5


def load_sources(digit_size: int = 16) -> Tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digits upscaled bilinearly to `digit_size` px, in [0, 1]."""
    from sklearn.datasets import load_digits  # imported here: only this dataset needs it

    digits = load_digits()
    images = tf.constant(digits.images[..., None] / 16.0, tf.float32)
    upscaled = tf.image.resize(images, [digit_size, digit_size], method="bilinear",
                               antialias=False)
    return np.clip(upscaled.numpy()[..., 0], 0.0, 1.0), digits.target.astype(np.int64)


def make_canvas(rng: np.random.Generator, digit: np.ndarray, pool: np.ndarray,
                spec: CanvasSpec = CanvasSpec()) -> Tuple[np.ndarray, Tuple[int, int]]:
    """One canvas [S, S] in [0, 1] with `digit` at a random place and clutter
    cut from the digits of `pool` [N, d, d]; returns it and the digit's
    top-left corner (y, x)."""
    size, side = spec.canvas_size, spec.digit_size
    canvas = np.zeros([size, size], np.float32)
    for _ in range(spec.clutter):
        fragment = _fragment(rng, pool, spec)
        y, x = rng.integers(0, size - fragment.shape[0] + 1, size=2)
        region = canvas[y:y + fragment.shape[0], x:x + fragment.shape[1]]
        np.maximum(region, fragment, out=region)
    y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    region = canvas[y:y + side, x:x + side]
    np.maximum(region, digit, out=region)
    canvas += rng.normal(0.0, spec.noise, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0), (y, x)


def _fragment(rng, pool, spec):
    low, high = spec.fragment_sizes
    while True:   # crops of blank corners are redrawn: every fragment shows ink
        source = pool[rng.integers(len(pool))]
        side = int(rng.integers(low, high + 1))
        y, x = rng.integers(0, source.shape[0] - side + 1, size=2)
        crop = source[y:y + side, x:x + side]
        if crop.max() >= spec.min_fragment_ink:
            return crop


def canvas_example(split: str, index: int, seed: int, sources: np.ndarray, labels: np.ndarray,
                   spec: CanvasSpec = CanvasSpec()) -> Tuple[np.ndarray, int, Tuple[float, ...]]:
    """Canvas `index` of `split`: (uint8 RGB image, label, normalised digit box)."""
    start, stop = SPLITS[split]
    rng, chosen = _canvas_rng(split, index, seed)
    others = np.concatenate([np.arange(start, chosen), np.arange(chosen + 1, stop)])
    canvas, (y, x) = make_canvas(rng, sources[chosen], sources[others], spec)
    image = np.repeat(np.round(canvas * 255.0).astype(np.uint8)[..., None], 3, axis=-1)
    s, d = spec.canvas_size, spec.digit_size
    return image, int(labels[chosen]), (y / s, x / s, (y + d) / s, (x + d) / s)


def write_split(output_dir: str, split: str, count: int, shards: int, seed: int,
                spec: CanvasSpec = CanvasSpec(), workers: int = 1,
                progress: bool = False, runner: str = "local",
                beam_options: Sequence[str] = ()) -> Dict:
    """Writes `count` canvases of `split` in `shards` TFRecord shards with
    `workers` processes (or on Beam: `runner="beam"` with `beam_options`);
    returns the report. `progress` shows a bar with an ETA."""
    if count < 1 or shards < 1 or shards > count:
        raise ValueError(f"{split}: need 1 <= shards ({shards}) <= canvases ({count})")
    os.makedirs(output_dir, exist_ok=True)
    sources, labels = load_sources(spec.digit_size)
    bounds = np.linspace(0, count, shards + 1).astype(int)
    tasks = [(os.path.join(output_dir, schema.shard_name(SHARD_PREFIX[split], shard, shards)),
              split, range(bounds[shard], bounds[shard + 1]), seed, spec)
             for shard in range(shards)]
    missing = [task for task in tasks if not os.path.exists(task[0])]
    bar = tf.keras.utils.Progbar(count, unit_name="canvas") if progress else None
    if bar is not None:
        bar.update(count - sum(len(task[2]) for task in missing))
    if runner == "beam" and missing:
        beam.run_tasks(_write_shard, missing, output_dir, split, beam_options)
    elif workers > 1 and len(missing) > 1:
        with multiprocessing.get_context("spawn").Pool(
                min(workers, len(missing)), initializer=shards_lib.init_worker) as pool:
            for written in pool.imap_unordered(_write_shard, missing):
                if bar is not None:
                    bar.add(written)
    else:
        for task in missing:
            written = _write_shard(task, sources, labels)
            if bar is not None:
                bar.add(written)
    chosen = [_canvas_rng(split, i, seed)[1] for i in range(count)]
    report = {"split": split, "images": int(count), "shards": shards, "seed": seed,
              "class_names": list(CLASS_NAMES),
              "images_per_class": np.bincount(labels[chosen], minlength=10).tolist(),
              "spec": dataclasses.asdict(spec)}
    with open(os.path.join(output_dir, f"{split}_report.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    return report


def write_samples(folder: str, count: int, seed: int = 0,
                  spec: CanvasSpec = CanvasSpec()) -> list:
    """The first `count` test canvases as PNG files, `test_<index>_digit<label>.png`
    (the test split's canvases, e.g. for `experiments.predict`); returns the paths."""
    sources, labels = load_sources(spec.digit_size)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        image, label, _ = canvas_example("test", index, seed, sources, labels, spec)
        path = os.path.join(folder, f"test_{index:06d}_digit{label}.png")
        tf.io.write_file(path, tf.io.encode_png(image))
        paths.append(path)
    return paths


def _write_shard(task, sources=None, labels=None) -> int:
    """Writes one shard to a temporary name, then renames it; returns its canvas count."""
    path, split, indices, seed, spec = task
    if sources is None:
        sources, labels = load_sources(spec.digit_size)
    temporary = path + ".incomplete"
    with tf.io.TFRecordWriter(temporary) as writer:
        for i in indices:
            image, label, box = canvas_example(split, i, seed, sources, labels, spec)
            jpeg = tf.io.encode_jpeg(image, quality=95).numpy()
            writer.write(schema.encode_example(
                jpeg, spec.canvas_size, spec.canvas_size, label, str(label),
                f"{split}_{i:06d}", boxes=[box], box_labels=[label]))
    os.replace(temporary, path)
    return len(indices)


def _canvas_rng(split: str, index: int, seed: int) -> Tuple[np.random.Generator, int]:
    """The generator of canvas `index` and the source digit it draws first."""
    start, stop = SPLITS[split]
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    return rng, int(rng.integers(start, stop))


def main(argv):
    del argv
    from absl import flags

    values = flags.FLAGS
    if values.samples_dir:
        paths = write_samples(values.samples_dir, values.samples, values.seed)
        print(f"wrote {len(paths)} test canvases as PNG files to {values.samples_dir}")
        return
    if not values.output_dir:
        sys.exit("error: --output_dir: is required (or --samples_dir for PNG samples only)")
    for split, count, shards in (("train", values.train_size, values.train_shards),
                                 ("test", values.test_size, values.test_shards)):
        print(f"{split}: writing {count} canvases")
        report = write_split(values.output_dir, split, count, shards, values.seed,
                             workers=values.workers, progress=values.runner == "local",
                             runner=values.runner,
                             beam_options=beam.pipeline_options(values.beam_pipeline_options))
        print(f"{split}: {report['images']} canvases in {shards} shards -> {values.output_dir}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("output_dir", None, "Where the TFRecord shards and reports go.")
    flags.DEFINE_integer("train_size", 20000, "Training canvases.")
    flags.DEFINE_integer("test_size", 2000, "Test canvases.")
    flags.DEFINE_integer("train_shards", 16, "Training shards.")
    flags.DEFINE_integer("test_shards", 4, "Test shards.")
    flags.DEFINE_integer("seed", 0, "Seed of the canvases.")
    flags.DEFINE_integer("workers", 2, "Processes writing shards (--runner=local).")
    flags.DEFINE_string("samples_dir", None, "Instead of shards, write the first --samples "
                        "test canvases as PNG files here (e.g. for experiments.predict).")
    flags.DEFINE_integer("samples", 16, "Test canvases written by --samples_dir.")
    beam.define_flags()
    # Run from the imported module, so that the shard tasks Beam pickles name
    # data_prep.digits, not __main__.
    from data_prep import digits
    app.run(digits.main)
