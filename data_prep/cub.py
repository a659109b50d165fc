"""CUB-200-2011 -> sharded TFRecords.

    python -m data_prep.cub --input_dir=/data/CUB_200_2011 --output_dir=/data/cub_tfrecords

`--input_dir` is the official `CUB_200_2011/` folder (images/, images.txt,
image_class_labels.txt, train_test_split.txt, bounding_boxes.txt,
classes.txt). Labels are the official class ids minus one (0..199), names
from classes.txt; one box per image. Shards: train-*-of-00016,
test-*-of-00016.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from data_prep import birds
from data_prep.problems import ProblemLog

DEFAULT_SHARDS = {"train": 16, "test": 16}


def read_classes(root: str) -> Tuple[List[str], Dict[str, int]]:
    """(class names by label, {class id: label}); class ids must be 1..N."""
    table = birds.read_table(root, "classes.txt", 1, ProblemLog(strict=True))
    ids = sorted(table, key=int)
    if [int(i) for i in ids] != list(range(1, len(ids) + 1)):
        raise ValueError(f"{root}/classes.txt: class ids must be 1..{len(ids)}")
    return [table[i][0] for i in ids], {i: int(i) - 1 for i in ids}


def main(argv):
    birds.convert(argv, read_classes)


if __name__ == "__main__":
    from absl import app

    from data_prep import cli

    cli.define_flags(DEFAULT_SHARDS, "The CUB_200_2011/ folder (images/ and the .txt tables).")
    app.run(main)
