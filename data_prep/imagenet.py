"""ImageNet (ILSVRC2012) -> sharded TFRecords.

    python -m data_prep.imagenet --input_dir=/data/ILSVRC2012 --output_dir=/data/imagenet \
        --val_labels_file=/data/ILSVRC2012/val_synsets.txt --train_bbox_dir=/data/Annotation

Raw layout: `train/<synset>/<synset>_<n>.JPEG`; `val/` either in synset
folders too, or flat (`ILSVRC2012_val_00000001.JPEG`, ...) with
`--val_labels_file` (one synset per line, in the sorted order of the val
file names) or `--val_annotations_dir` (one Pascal VOC XML per image, the
label being the first object's synset; its boxes are kept too). Training
boxes come from the XML files of `--train_bbox_dir` (`<synset>/<name>.xml`
or flat `<name>.xml`); images without an XML simply have no boxes.

Labels are the positions of the synsets in sorted order (0..999), or in the
order of `--synsets_file` (first word of each line); `image/class/text` is
the synset id. Shards: train-*-of-01024, validation-*-of-00128.
"""
from __future__ import annotations

import functools
import os
import re
import xml.etree.ElementTree as ElementTree
from typing import Dict, List, Optional, Sequence, Tuple

from data_prep.images import Item, PixelBox
from data_prep.problems import ProblemLog

PREFIXES = {"train": "train", "val": "validation"}
DEFAULT_SHARDS = {"train": 1024, "val": 128}
SYNSET = re.compile(r"^n\d{8}$")


def read_synsets(root: str, synsets_file: Optional[str] = None) -> List[str]:
    """The class order: `synsets_file` (first word per line) or the sorted train folders."""
    if synsets_file:
        with open(synsets_file) as stream:
            synsets = [line.split()[0] for line in stream if line.strip()]
    else:
        train = os.path.join(root, "train")
        if not os.path.isdir(train):
            raise FileNotFoundError(f"--input_dir: {train} does not exist; give --synsets_file "
                                    "to fix the class order without it")
        synsets = sorted(d for d in os.listdir(train) if SYNSET.match(d))
    if not synsets or len(set(synsets)) != len(synsets):
        raise ValueError(f"--synsets_file / train folders: {len(synsets)} synsets, "
                         f"{len(set(synsets))} distinct; need a non-empty list without repeats")
    return synsets


def read_xml(path: str, root: str, labels: Dict[str, int], log: ProblemLog
             ) -> Tuple[Tuple[PixelBox, ...], Optional[Tuple[int, int]], Optional[str]]:
    """(boxes, annotated (width, height), first object's synset) of a Pascal VOC XML."""
    name = os.path.relpath(path, root) if path.startswith(root) else path
    try:
        tree = ElementTree.parse(path).getroot()
        size = tree.find("size")
        reference = None
        if size is not None:
            reference = (int(size.findtext("width")), int(size.findtext("height")))
            reference = reference if min(reference) > 0 else None
        objects = [(obj.findtext("name", "").strip(), obj.find("bndbox"))
                   for obj in tree.iter("object")]
    except (ElementTree.ParseError, OSError, TypeError, ValueError) as error:
        log.add(name, f"malformed XML ({str(error)[:100]})", "image stored without boxes")
        return (), None, None
    boxes = []
    for index, (synset, box) in enumerate(objects):
        if synset not in labels:
            log.add(name, f"object #{index} has unknown synset {synset!r}", "box dropped")
            continue
        try:
            coords = [float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            log.add(name, f"object #{index} has a malformed bndbox", "box dropped")
            continue
        boxes.append(PixelBox(*coords, labels[synset]))
    return tuple(boxes), reference, objects[0][0] if objects else None


def _image_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, f)))


def _bbox_xml(bbox_dir: str, synset: str, image: str) -> Optional[str]:
    stem = os.path.splitext(os.path.basename(image))[0]
    for candidate in (os.path.join(bbox_dir, synset, stem + ".xml"),
                      os.path.join(bbox_dir, stem + ".xml")):
        if os.path.exists(candidate):
            return candidate
    return None


def _list_synset_folders(root: str, split: str, labels: Dict[str, int], log: ProblemLog,
                         bbox_dir: Optional[str]) -> List[Item]:
    items = []
    split_dir = os.path.join(root, split)
    for synset in sorted(os.listdir(split_dir)):
        if not os.path.isdir(os.path.join(split_dir, synset)):
            continue
        for image in _image_files(os.path.join(split_dir, synset)):
            filename = os.path.relpath(image, root)
            if synset not in labels:
                log.skip(filename, f"unknown synset {synset!r}")
                continue
            xml = _bbox_xml(bbox_dir, synset, image) if bbox_dir else None
            boxes, reference = read_xml(xml, root, labels, log)[:2] if xml else ((), None)
            items.append(Item(image, filename, labels[synset], boxes, reference,
                              os.path.relpath(xml, root) if xml else ""))
    return items


def list_split(root: str, split: str, log: ProblemLog, synsets: Sequence[str],
               val_labels_file: Optional[str] = None, val_annotations_dir: Optional[str] = None,
               train_bbox_dir: Optional[str] = None) -> List[Item]:
    """The items of "train" or "val"; bad inputs go to `log`."""
    labels = {synset: index for index, synset in enumerate(synsets)}
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"--input_dir: {split_dir} does not exist (--splits asks for "
                                f"{split})")
    if split == "train" or any(os.path.isdir(os.path.join(split_dir, d))
                               for d in os.listdir(split_dir)):
        return _list_synset_folders(root, split, labels, log,
                                    train_bbox_dir if split == "train" else None)
    images = _image_files(split_dir)
    if val_labels_file:
        with open(val_labels_file) as stream:
            synset_of = [line.strip() for line in stream if line.strip()]
        if len(synset_of) != len(images):
            log.add(val_labels_file, f"{len(synset_of)} labels for {len(images)} val images",
                    "images without a label skipped")
    elif not val_annotations_dir:
        raise FileNotFoundError("a flat val/ folder needs --val_labels_file or "
                                "--val_annotations_dir")
    items = []
    for position, image in enumerate(images):
        filename = os.path.relpath(image, root)
        boxes, reference, annotation = (), None, ""
        if val_labels_file:
            synset = synset_of[position] if position < len(synset_of) else None
        else:
            xml = os.path.join(val_annotations_dir,
                               os.path.splitext(os.path.basename(image))[0] + ".xml")
            if not os.path.exists(xml):
                log.skip(filename, f"no annotation {xml}")
                continue
            boxes, reference, synset = read_xml(xml, root, labels, log)
            annotation = os.path.relpath(xml, root) if xml.startswith(root) else xml
        if synset is None:
            log.skip(filename, "no label")
            continue
        if synset not in labels:
            log.skip(filename, f"unknown synset {synset!r}")
            continue
        items.append(Item(image, filename, labels[synset], boxes, reference, annotation))
    return items


def main(argv):
    from data_prep import cli

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    flags = cli.FLAGS
    synsets = read_synsets(flags.input_dir, flags.synsets_file)
    lister = functools.partial(list_split, synsets=synsets,
                               val_labels_file=flags.val_labels_file,
                               val_annotations_dir=flags.val_annotations_dir,
                               train_bbox_dir=flags.train_bbox_dir)
    cli.run(lister, PREFIXES, synsets, cli.options_from_flags())


if __name__ == "__main__":
    from absl import app, flags

    from data_prep import cli

    cli.define_flags(DEFAULT_SHARDS, "ILSVRC2012 root holding train/<synset>/ and val/.")
    flags.DEFINE_string("synsets_file", None, "Class order: one synset per line (first word); "
                        "default: the sorted train folders.")
    flags.DEFINE_string("val_labels_file", None, "One synset per line for the sorted flat val "
                        "images.")
    flags.DEFINE_string("val_annotations_dir", None, "Pascal VOC XML per flat val image.")
    flags.DEFINE_string("train_bbox_dir", None, "Pascal VOC XML files of the training boxes.")
    app.run(main)
