"""Throughput of the data converter and of the training input pipeline.

    python -m experiments.benchmark_data                      # toy data, ~1-2 minutes
    python -m experiments.benchmark_data --images=512 --image_size=1000,800 --workers=8

Generates a toy fMoW-like raw tree of random JPEGs in a temporary
directory, converts it with `data_prep` on each of `--runners` in turn,
`--repeats` times (images/s; the process pool of `--workers` and Beam's
DirectRunner with as many processes, checking that their shards are
byte-identical), then times training batches of `tnet_tf.data.make_dataset`
at each `--input_sizes`, as one stream and in the epoch layout a training
stage reads (batches/s, after a warm-up). Prints one JSON line per
measurement with the cores used.
"""
import json
import os
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("images", 256, "Raw images to generate.")
flags.DEFINE_list("image_size", ["800", "600"], "Width, height of the raw images.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Converter worker processes.")
flags.DEFINE_integer("shards", 8, "Training shards.")
flags.DEFINE_list("runners", ["local"], "Converter runners to time: local, beam.")
flags.DEFINE_integer("repeats", 1, "Conversions per runner (alternating runners).")
flags.DEFINE_list("input_sizes", ["448", "896"], "Training input sizes to time.")
flags.DEFINE_integer("batch_size", 16, "Batch size of the timed pipeline.")
flags.DEFINE_integer("batches", 12, "Timed batches per input size (after 2 warm-up batches).")
FLAGS = flags.FLAGS


def make_raw_tree(root, count, width, height):
    import numpy as np
    import tensorflow as tf

    from data_prep.fmow import CLASSES

    rng = np.random.RandomState(0)
    for index in range(count):
        category = CLASSES[index % len(CLASSES)]
        folder = os.path.join(root, "train", category, f"{category}_{index}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.randint(0, 256, (1, 8, 8, 3)).astype(np.float32)
        noise = rng.randint(-12, 13, (height, width, 3))
        image = tf.image.resize(coarse, [height, width])[0].numpy() + noise
        jpeg = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()
        stem = os.path.join(folder, f"{category}_{index}_0_rgb")
        with open(stem + ".jpg", "wb") as stream:
            stream.write(jpeg)
        box = {"box": [width // 4, height // 4, width // 2, height // 2], "category": category}
        with open(stem + ".json", "w") as stream:
            json.dump({"bounding_boxes": [box], "img_width": width, "img_height": height}, stream)


def main(argv):
    del argv
    from data_prep import fmow, shards
    from data_prep.problems import ProblemLog
    from tnet_tf.data import InputConfig, make_dataset
    from tnet_tf.data.pipeline import Epochs

    width, height = (int(v) for v in FLAGS.image_size)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        raw, out = os.path.join(folder, "raw"), os.path.join(folder, "out")
        make_raw_tree(raw, FLAGS.images, width, height)
        items = fmow.list_split(raw, "train", ProblemLog())
        split = shards.Split("train", "train", FLAGS.shards, fmow.CLASSES, items)
        written = {}
        beam_options = ("--direct_running_mode=multi_processing",
                        f"--direct_num_workers={FLAGS.workers}")
        for repeat in range(FLAGS.repeats):
            for runner in FLAGS.runners:
                target = os.path.join(folder, f"{runner}_{repeat}")
                start = time.perf_counter()
                shards.convert([split], shards.Options(target, workers=FLAGS.workers,
                                                       progress=False, runner=runner,
                                                       beam_options=beam_options))
                seconds = time.perf_counter() - start
                written[runner] = _shard_bytes(target)
                print(json.dumps({"measure": "conversion", "runner": runner,
                                  "images": len(items), "image_size": f"{width}x{height}",
                                  "workers": FLAGS.workers, "cores": cores,
                                  "seconds": round(seconds, 2),
                                  "images_per_second": round(len(items) / seconds, 1),
                                  "identical_to_first_runner":
                                  written[runner] == written[FLAGS.runners[0]]}))
        out = target
        for size in (int(s) for s in FLAGS.input_sizes):
            config = InputConfig(file_pattern=os.path.join(out, "train-*"), image_size=size,
                                 batch_size=FLAGS.batch_size, training=True, seed=0,
                                 shuffle_buffer=256)
            epochs = Epochs(steps=FLAGS.batches + 2, count=1)
            for layout, dataset in (("stream", make_dataset(config)),
                                    ("epochs", make_dataset(config, epochs=epochs))):
                iterator = iter(dataset)
                for _ in range(2):
                    next(iterator)
                start = time.perf_counter()
                for _ in range(FLAGS.batches):
                    next(iterator)
                seconds = time.perf_counter() - start
                print(json.dumps({"measure": "training pipeline", "layout": layout,
                                  "input_size": size, "batch_size": FLAGS.batch_size,
                                  "cores": cores,
                                  "batches_per_second": round(FLAGS.batches / seconds, 2),
                                  "images_per_second": round(
                                      FLAGS.batches * FLAGS.batch_size / seconds, 1)}))


def _shard_bytes(folder):
    shards = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("train-"):
            with open(os.path.join(folder, name), "rb") as stream:
                shards[name] = stream.read()
    return shards


if __name__ == "__main__":
    app.run(main)
