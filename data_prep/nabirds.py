"""NABirds -> sharded TFRecords.

    python -m data_prep.nabirds --input_dir=/data/nabirds --output_dir=/data/nabirds_tfrecords

`--input_dir` is the official `nabirds/` folder (images/, images.txt,
image_class_labels.txt, train_test_split.txt, bounding_boxes.txt,
classes.txt, hierarchy.txt). Images are labelled with the 555 leaf classes
of the hierarchy; label = position of the class id among the leaf ids in
increasing order (without hierarchy.txt: among the class ids used by
image_class_labels.txt). Shards: train-*-of-00064, test-*-of-00064.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from data_prep import birds
from data_prep.problems import ProblemLog

DEFAULT_SHARDS = {"train": 64, "test": 64}


def read_classes(root: str) -> Tuple[List[str], Dict[str, int]]:
    """(leaf class names by label, {class id: label})."""
    strict = ProblemLog(strict=True)
    names = birds.read_table(root, "classes.txt", 1, strict, rest_is_text=True)
    if os.path.exists(os.path.join(root, "hierarchy.txt")):
        parents = {parent for (parent,) in birds.read_table(root, "hierarchy.txt", 1,
                                                            strict).values()}
        leaves = [class_id for class_id in names if class_id not in parents]
    else:
        used = birds.read_table(root, "image_class_labels.txt", 1, ProblemLog())
        leaves = list({class_id for (class_id,) in used.values() if class_id in names})
    leaves.sort(key=int)
    return [names[i][0] for i in leaves], {i: label for label, i in enumerate(leaves)}


def main(argv):
    birds.convert(argv, read_classes)


if __name__ == "__main__":
    from absl import app

    from data_prep import cli

    cli.define_flags(DEFAULT_SHARDS, "The nabirds/ folder (images/ and the .txt tables).")
    app.run(main)
