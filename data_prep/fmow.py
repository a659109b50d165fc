"""fMoW-rgb -> sharded TFRecords.

    python -m data_prep.fmow --input_dir=/data/fmow-rgb --output_dir=/data/fmow_tfrecords
    python -m data_prep.fmow --input_dir=/data/fmow-rgb --output_dir=/data/fmow_bbox \
        --bbox_crops --splits=train,val

Raw layout (replication.md, section 4):

    train/<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg  (+ .json)
    val/...                                                     (same)
    test/<id>/<id>_<k>_rgb.jpg                                  (+ .json, unlabelled)
    test_gt/<category>/<category>_<n>/<category>_<n>_<k>_rgb.json
    test_gt_mapping.json: [{"input": "test_gt/<cat>/<cat>_<n>", "output": "test/<id>"}, ...]

Labels follow the fixed 62-class order of `CLASSES`. Boxes come from each
image's JSON ("bounding_boxes": [x, y, width, height] in pixels); test
images take their label and boxes from the ground truth their mapping entry
points to. Shards: train-*-of-00512, validation-*-of-00128, test-*-of-00128.
"""
from __future__ import annotations

import glob
import json
import os
from typing import List, Tuple

from data_prep.images import Item, PixelBox
from data_prep.problems import ProblemLog

CLASSES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "interchange", "lake_or_pond", "lighthouse", "military_facility", "multi-unit_residential",
    "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park",
    "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison",
    "race_track", "railway_bridge", "recreational_facility", "impoverished_settlement",
    "road_bridge", "runway", "shipyard", "shopping_mall", "single-unit_residential",
    "smokestack", "solar_farm", "space_facility", "stadium", "storage_tank", "surface_mine",
    "swimming_pool", "toll_booth", "tower", "tunnel_opening", "waste_disposal",
    "water_treatment_facility", "wind_farm", "zoo")
LABELS = {name: index for index, name in enumerate(CLASSES)}
PREFIXES = {"train": "train", "val": "validation", "test": "test"}
DEFAULT_SHARDS = {"train": 512, "val": 128, "test": 128}
MAPPING_FILE = "test_gt_mapping.json"
RGB_SUFFIX = "_rgb.jpg"
MSRGB_REASON = "multispectral render (*_msrgb.jpg, *_msrgb.json): not used"


def _rgb_images(pattern: str, log: ProblemLog) -> List[str]:
    """The `*_rgb.jpg` files of a folder glob; the `*_msrgb.*` files beside
    them are counted as ignored."""
    log.ignore(MSRGB_REASON, len(glob.glob(pattern + "_msrgb.jpg"))
               + len(glob.glob(pattern + "_msrgb.json")))
    return sorted(glob.glob(pattern + RGB_SUFFIX))


def list_split(root: str, split: str, log: ProblemLog) -> List[Item]:
    """The items of one split ("train", "val" or "test"); bad inputs go to `log`."""
    if split == "test":
        return _list_test(root, log)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"--input_dir: {split_dir} does not exist (--splits asks "
                                f"for {split})")
    items = []
    for category in sorted(os.listdir(split_dir)):
        images = _rgb_images(os.path.join(split_dir, category, "*", "*"), log)
        for image in images:
            filename = os.path.relpath(image, root)
            if category not in LABELS:
                log.skip(filename, f"unknown category {category!r}")
                continue
            annotation = image[:-len(".jpg")] + ".json"
            items.append(Item(image, filename, LABELS[category], read_boxes(root, annotation, log),
                              annotation=os.path.relpath(annotation, root)))
    return items


def read_boxes(root: str, json_path: str, log: ProblemLog) -> Tuple[PixelBox, ...]:
    """The boxes of one metadata JSON; bad JSON or boxes are logged, never fatal."""
    name = os.path.relpath(json_path, root)
    if not os.path.exists(json_path):
        log.add(name, "missing JSON metadata", "image stored without boxes")
        return ()
    try:
        with open(json_path, "rb") as stream:
            metadata = json.load(stream)
    except (OSError, ValueError) as error:
        log.add(name, f"malformed JSON ({str(error)[:100]})", "image stored without boxes")
        return ()
    entries = metadata.get("bounding_boxes") if isinstance(metadata, dict) else None
    if isinstance(entries, dict):
        log.add(name, "'bounding_boxes' is a single object, not a list", "read as a list")
        entries = [entries]
    if not isinstance(entries, list):
        log.add(name, "malformed JSON (no 'bounding_boxes' list)", "image stored without boxes")
        return ()
    boxes = []
    for index, entry in enumerate(entries):
        box = entry.get("box") if isinstance(entry, dict) else None
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            log.add(name, f"box #{index} is malformed: {str(entry)[:80]}", "box dropped")
            continue
        category = entry.get("category")
        if category not in LABELS:
            log.add(name, f"box #{index} has unknown category {category!r}", "box dropped")
            continue
        boxes.append(PixelBox.from_xywh(*box, LABELS[category]))
    return tuple(boxes)


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _read_mapping(root: str, log: ProblemLog) -> dict:
    """{real path of test/<id>: (category, test_gt/<cat>/<cat>_<n> path)} of the valid entries."""
    try:
        with open(os.path.join(root, MAPPING_FILE), "rb") as stream:
            entries = json.load(stream)
    except FileNotFoundError:
        log.skip(MAPPING_FILE, "missing: the test split has no labels")
        return {}
    except (OSError, ValueError) as error:
        log.skip(MAPPING_FILE, f"malformed JSON ({str(error)[:100]}): the test split has no "
                 "labels")
        return {}
    if not isinstance(entries, list):
        log.skip(MAPPING_FILE, "malformed: not a list of entries")
        return {}
    mapping = {}
    for index, entry in enumerate(entries):
        where = f"{MAPPING_FILE} entry #{index}"
        if not (isinstance(entry, dict) and isinstance(entry.get("input"), str)
                and isinstance(entry.get("output"), str)):
            log.skip(where, f"malformed entry {str(entry)[:80]}")
            continue
        truth, test = (os.path.join(root, entry[key]) for key in ("input", "output"))
        if not (_inside(root, truth) and _inside(root, test)):
            log.skip(where, f"points outside the dataset root: {entry}")
            continue
        category = os.path.basename(os.path.dirname(os.path.normpath(truth)))
        if category not in LABELS:
            log.skip(where, f"unknown category {category!r} in {entry['input']}")
            continue
        if not os.path.isdir(test):
            log.skip(where, f"{entry['output']} does not exist")
            continue
        mapping[os.path.realpath(test)] = (category, os.path.normpath(truth))
    return mapping


def _list_test(root: str, log: ProblemLog) -> List[Item]:
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir):
        raise FileNotFoundError(f"--input_dir: {test_dir} does not exist (--splits asks for test)")
    mapping = _read_mapping(root, log)
    items = []
    for image in _rgb_images(os.path.join(test_dir, "*", "*"), log):
        filename = os.path.relpath(image, root)
        folder = os.path.dirname(image)
        if os.path.realpath(folder) not in mapping:
            log.skip(filename, f"no ground truth: {os.path.relpath(folder, root)} is in no "
                     f"valid {MAPPING_FILE} entry")
            continue
        category, truth = mapping[os.path.realpath(folder)]
        # test/<id>/<id>_<k>_rgb.jpg <-> test_gt/<cat>/<cat>_<n>/<cat>_<n>_<k>_rgb.json
        stem = os.path.basename(image)[:-len(".jpg")]
        suffix = stem[len(os.path.basename(folder)):]
        truth_json = os.path.join(truth, os.path.basename(truth) + suffix + ".json")
        items.append(Item(image, filename, LABELS[category], read_boxes(root, truth_json, log),
                          annotation=os.path.relpath(truth_json, root)))
    return items


def main(argv):
    from data_prep import cli

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    options = cli.options_from_flags(bbox_crops=cli.FLAGS.bbox_crops)
    cli.run(list_split, PREFIXES, CLASSES, options)


if __name__ == "__main__":
    from absl import app, flags

    from data_prep import cli

    cli.define_flags(DEFAULT_SHARDS, "fMoW-rgb root holding train/, val/, test/, test_gt/ "
                     f"and {MAPPING_FILE}.")
    flags.DEFINE_bool("bbox_crops", False, "Write one example per box, cropped with the "
                      "context margins of the bbox baseline.")
    app.run(main)
