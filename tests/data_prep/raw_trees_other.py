"""Raw ILSVRC2012, CUB-200-2011 and NABirds trees with real JPEGs and bad cases."""
from __future__ import annotations

import os

from raw_trees import Expected, Stored, bad_image, jpeg, normalised, write

SYNSETS = ("n01440764", "n01443537", "n01484850")


def _voc_xml(width, height, objects):
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def make_imagenet(root: str) -> Expected:
    """train: 3 synsets x 6 images with some XML boxes; flat val with a labels file and XMLs."""
    expected = Expected()
    for label, synset in enumerate(SYNSETS):
        for i in range(6):
            name = f"train/{synset}/{synset}_{i}.JPEG"
            write(f"{root}/{name}", jpeg(30 + i, 40, 10 * label + i))
            expected.stored[name] = Stored(label, [])
    first = f"train/{SYNSETS[0]}/{SYNSETS[0]}_0.JPEG"
    write(f"{root}/bbox/{SYNSETS[0]}/{SYNSETS[0]}_0.xml",
          _voc_xml(40, 30, [(SYNSETS[0], (4, 5, 20, 25)), ("n99999999", (1, 1, 9, 9))]))
    expected.stored[first].boxes = [(5 / 30, 4 / 40, 25 / 30, 20 / 40)]
    expected.problem("train", f"bbox/{SYNSETS[0]}/{SYNSETS[0]}_0.xml", "unknown synset",
                     "box dropped")
    write(f"{root}/bbox/{SYNSETS[1]}_1.xml",  # flat layout; box partly outside
          _voc_xml(40, 31, [(SYNSETS[1], (10, 10, 60, 20))]))
    expected.stored[f"train/{SYNSETS[1]}/{SYNSETS[1]}_1.JPEG"].boxes = [
        (10 / 31, 10 / 40, 20 / 31, 1.0)]
    expected.problem("train", f"bbox/{SYNSETS[1]}_1.xml", "extends outside", "box clipped")
    write(f"{root}/bbox/{SYNSETS[2]}/{SYNSETS[2]}_2.xml", "<annotation><size>")
    expected.problem("train", f"bbox/{SYNSETS[2]}/{SYNSETS[2]}_2.xml", "malformed XML",
                     "image stored without boxes")
    for kind, synset, i in (("png", SYNSETS[1], 3), ("cmyk", SYNSETS[1], 4),
                            ("grayscale", SYNSETS[2], 3), ("truncated", SYNSETS[2], 4)):
        name = f"train/{synset}/{synset}_{i}.JPEG"
        write(f"{root}/{name}", bad_image(kind, i))
        if kind == "truncated":
            del expected.stored[name]
            expected.problem("train", name, "truncated", "skipped")
        else:
            expected.stored[name].mode = "converted"
            reason = {"png": "PNG image", "cmyk": "CMYK", "grayscale": "grayscale"}[kind]
            expected.problem("train", name, reason, "converted")
    # Flat val: 6 images, 5 label lines (one unknown synset); XMLs for the first 5.
    labels = [SYNSETS[0], SYNSETS[2], "n00000001", SYNSETS[1], SYNSETS[0]]
    for i in range(6):
        name = f"val/ILSVRC2012_val_{i + 1:08d}.JPEG"
        write(f"{root}/{name}", jpeg(32, 36, 100 + i))
        if i < 5:
            write(f"{root}/val_xml/ILSVRC2012_val_{i + 1:08d}.xml",
                  _voc_xml(36, 32, [(labels[i], (2, 3, 30, 28))]))
        if i < 5 and labels[i] in SYNSETS:
            expected.stored[name] = Stored(SYNSETS.index(labels[i]), [])
    write(f"{root}/val_labels.txt", "\n".join(labels) + "\n")
    expected.problem("val", "val/ILSVRC2012_val_00000003.JPEG", "unknown synset", "skipped")
    expected.problem("val", "val/ILSVRC2012_val_00000006.JPEG", "no label", "skipped")
    expected.problem("val", f"{root}/val_labels.txt", "5 labels for 6 val images",
                     "images without a label skipped")
    return expected


def make_birds(root: str, nabirds: bool) -> tuple:
    """CUB (`nabirds=False`) or NABirds: 20 images of 4 classes; returns (expected, names).

    Bad cases: a malformed table line, a missing image file, a truncated
    image, an unknown class, an image without split entry, one without box,
    a box outside the image (clipped), a zero-size box (dropped), a PNG.
    """
    expected = Expected()
    if nabirds:
        class_ids = ["295", "296", "313", "314"]
        names = ["Black-bellied Whistling-Duck", "Fulvous Whistling-Duck", "Brant",
                 "Cackling Goose"]
        write(f"{root}/classes.txt", "0 Birds\n1 Ducks, Geese, and Swans\n" + "".join(
            f"{i} {n}\n" for i, n in zip(class_ids, names)))
        write(f"{root}/hierarchy.txt", "1 0\n295 1\n296 1\n313 1\n314 1\n")
    else:
        class_ids = ["1", "2", "3", "4"]
        names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
                 "004.Groove_billed_Ani"]
        write(f"{root}/classes.txt", "".join(f"{i} {n}\n" for i, n in zip(class_ids, names)))
    tables = {key: [] for key in ("images", "labels", "split", "boxes")}
    for i in range(20):
        image_id = f"{i:04x}a1b2-c3d4-e5f6-0789-abcdef{i:06d}" if nabirds else str(i + 1)
        label = i % 4
        path = f"{label:04d}/img_{i:03d}.jpg" if nabirds else f"{names[label]}/img_{i:03d}.jpg"
        height, width = 30 + i % 3, 40
        write(f"{root}/images/{path}", jpeg(height, width, 500 + i))
        tables["images"].append(f"{image_id} {path}")
        tables["labels"].append(f"{image_id} {class_ids[label]}")
        tables["split"].append(f"{image_id} {i % 2}")
        box = (3, 4, 20, 15)
        tables["boxes"].append(f"{image_id} " + " ".join(str(v) for v in box))
        split = "train" if i % 2 else "test"
        expected.stored[f"images/{path}"] = Stored(label, [normalised(*box, width, height)])
        expected.problems.setdefault(split, [])
    stored = list(expected.stored)

    def case(index, split, file, reason, action, drop=True):
        if drop:
            expected.stored.pop(stored[index], None)
        expected.problem(split, file, reason, action)

    os.remove(f"{root}/{stored[1]}")
    case(1, "train", stored[1], "unreadable", "skipped")
    write(f"{root}/{stored[2]}", bad_image("truncated", 2))
    case(2, "test", stored[2], "truncated", "skipped")
    tables["labels"][3] = tables["labels"][3].split()[0] + " 999"
    case(3, "train", stored[3], "no known class", "skipped")
    del tables["split"][4]
    for split in ("train", "test"):
        case(4, split, stored[4], "no valid train_test_split.txt entry", "skipped")
    del tables["boxes"][5]
    expected.stored[stored[5]].boxes = []
    case(5, "train", stored[5], "no bounding_boxes.txt entry", "image stored without boxes",
         drop=False)
    image_id = tables["images"][6].split()[0]
    tables["boxes"][5] = f"{image_id} 30 20 40 40"   # index 5 is image 6 after the deletion
    expected.stored[stored[6]].boxes = [normalised(30, 20, 10, 10, 40, 30)]
    case(6, "test", f"bounding_boxes.txt (image id {image_id})", "extends outside",
         "box clipped", drop=False)
    image_id = tables["images"][7].split()[0]
    tables["boxes"][6] = f"{image_id} 5 5 0 10"
    expected.stored[stored[7]].boxes = []
    case(7, "train", f"bounding_boxes.txt (image id {image_id})", "zero-size", "box dropped",
         drop=False)
    write(f"{root}/{stored[8]}", bad_image("png", 8))
    expected.stored[stored[8]] = Stored(0, [normalised(3, 4, 20, 15, 40, 30)], "converted")
    case(8, "test", stored[8], "PNG image", "converted", drop=False)
    tables["images"].insert(10, "this line is malformed")
    for split in ("train", "test"):
        case(10, split, "images.txt:11", "malformed line", "line ignored", drop=False)
    for key, name in (("images", "images.txt"), ("labels", "image_class_labels.txt"),
                      ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt")):
        write(f"{root}/{name}", "\n".join(tables[key]) + "\n")
    return expected, names
