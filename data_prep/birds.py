"""The table layout shared by CUB-200-2011 and NABirds.

Both ship `images.txt` (<id> <path under images/>), `image_class_labels.txt`
(<id> <class id>), `train_test_split.txt` (<id> <1 = train, 0 = test>),
`bounding_boxes.txt` (<id> <x> <y> <width> <height> in pixels) and
`classes.txt` (<class id> <name>).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List

from data_prep.images import Item, PixelBox
from data_prep.problems import ProblemLog

PREFIXES = {"train": "train", "test": "test"}


def read_table(root: str, name: str, columns: int, log: ProblemLog,
               rest_is_text: bool = False) -> Dict[str, List[str]]:
    """{first field: other fields} of a whitespace table; bad lines are logged and ignored.

    `columns` counts the fields after the id; with `rest_is_text` the rest of
    the line is one field (names with spaces).
    """
    path = os.path.join(root, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input_dir: {path} does not exist")
    table = {}
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            fields = line.split(None, 1) if rest_is_text else line.split()
            if len(fields) != columns + 1 or fields[0] in table:
                problem = "repeated id" if fields[0] in table else "malformed line"
                log.add(f"{name}:{number}", f"{problem}: {line.strip()[:80]!r}", "line ignored")
                continue
            table[fields[0]] = [f.strip() for f in fields[1:]]
    return table


def list_split(root: str, split: str, log: ProblemLog, label_of_class: Dict[str, int]
               ) -> List[Item]:
    """The items of "train" or "test"; `label_of_class` maps class ids to labels."""
    images = read_table(root, "images.txt", 1, log)
    classes = read_table(root, "image_class_labels.txt", 1, log)
    is_train = read_table(root, "train_test_split.txt", 1, log)
    boxes = read_table(root, "bounding_boxes.txt", 4, log)
    wanted = "1" if split == "train" else "0"
    items = []
    for image_id, (path,) in sorted(images.items(), key=lambda entry: entry[1][0]):
        filename = os.path.join("images", path)
        if image_id not in is_train or is_train[image_id][0] not in ("0", "1"):
            log.skip(filename, f"image id {image_id} has no valid train_test_split.txt entry")
            continue
        if is_train[image_id][0] != wanted:
            continue
        class_id = classes.get(image_id, [None])[0]
        if class_id not in label_of_class:
            log.skip(filename, f"image id {image_id} has no known class (class id {class_id})")
            continue
        label = label_of_class[class_id]
        box = ()
        try:
            box = (PixelBox.from_xywh(*boxes[image_id], label),)
        except KeyError:
            log.add(filename, "no bounding_boxes.txt entry", "image stored without boxes")
        except ValueError:
            log.add(filename, f"malformed bounding_boxes.txt entry {boxes[image_id]}",
                    "image stored without boxes")
        items.append(Item(os.path.join(root, filename), filename, label, box,
                          annotation=f"bounding_boxes.txt (image id {image_id})"))
    return items


def convert(argv, read_classes: Callable) -> None:
    """The `main` of a bird converter: `read_classes(root)` gives (class names,
    class id -> label)."""
    from data_prep import cli

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    names, label_of_class = read_classes(cli.FLAGS.input_dir)
    lister = functools.partial(list_split, label_of_class=label_of_class)
    cli.run(lister, PREFIXES, names, cli.options_from_flags())
