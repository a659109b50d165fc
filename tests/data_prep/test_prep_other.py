"""ImageNet, CUB and NABirds converters: raw trees with bad cases, read back exactly."""
import pytest

import raw_trees
import raw_trees_other
from data_prep import birds, cub, imagenet, nabirds, shards
from data_prep.problems import ProblemLog


def convert(out, splits, lister, prefixes, class_names, num_shards=2):
    prepared = []
    for name in splits:
        log = ProblemLog()
        items = lister(name, log)
        prepared.append(shards.Split(name, prefixes[name], num_shards, class_names, items,
                                     log.problems))
    options = shards.Options(str(out), max_min_dim=raw_trees.MAX_MIN_DIM, progress=False)
    return shards.convert(prepared, options)


def test_imagenet_train_and_val_with_labels_file(tmp_path):
    root = tmp_path / "ILSVRC2012"
    expected = raw_trees_other.make_imagenet(str(root))
    synsets = imagenet.read_synsets(str(root))
    assert synsets == list(raw_trees_other.SYNSETS)

    def lister(split, log):
        return imagenet.list_split(str(root), split, log, synsets,
                                   val_labels_file=str(root / "val_labels.txt"),
                                   train_bbox_dir=str(root / "bbox"))

    reports = convert(tmp_path / "out", ["train", "val"], lister, imagenet.PREFIXES, synsets)
    for split, prefix in imagenet.PREFIXES.items():
        files, records = raw_trees.read_records(tmp_path / "out", prefix)
        assert len(files) == 2
        wanted = {n: s for n, s in expected.stored.items() if n.startswith(split + "/")}
        raw_trees.check_records(root, records, wanted, synsets)
        raw_trees.check_report(reports[split], expected.problems[split], wanted, synsets)


def test_imagenet_val_labels_and_boxes_from_xml(tmp_path):
    root = tmp_path / "ILSVRC2012"
    expected = raw_trees_other.make_imagenet(str(root))
    synsets = list(raw_trees_other.SYNSETS)
    log = ProblemLog()
    items = imagenet.list_split(str(root), "val", log, synsets,
                                val_annotations_dir=str(root / "val_xml"))
    labels = {item.filename: item.label for item in items}
    assert labels == {n: s.label for n, s in expected.stored.items() if n.startswith("val/")}
    assert all(len(item.boxes) == 1 and item.reference_size == (36, 32) for item in items)
    assert sorted((p.file, p.reason, p.action) for p in log.problems) == [
        ("val/ILSVRC2012_val_00000003.JPEG", "unknown synset 'n00000001'", "skipped"),
        ("val/ILSVRC2012_val_00000006.JPEG",
         f"no annotation {root}/val_xml/ILSVRC2012_val_00000006.xml", "skipped"),
        ("val_xml/ILSVRC2012_val_00000003.xml", "object #0 has unknown synset 'n00000001'",
         "box dropped")]


@pytest.mark.parametrize("dataset", ["cub", "nabirds"])
def test_birds_train_and_test(tmp_path, dataset):
    root = tmp_path / dataset
    expected, names = raw_trees_other.make_birds(str(root), nabirds=dataset == "nabirds")
    module = nabirds if dataset == "nabirds" else cub
    class_names, label_of_class = module.read_classes(str(root))
    assert class_names == names

    def lister(split, log):
        return birds.list_split(str(root), split, log, label_of_class)

    reports = convert(tmp_path / "out", ["train", "test"], lister, birds.PREFIXES, class_names)
    for split in ("train", "test"):
        _, records = raw_trees.read_records(tmp_path / "out", split)
        wanted = {n: s for n, s in expected.stored.items()
                  if _split_of(n, root) == split}
        raw_trees.check_records(root, records, wanted, class_names)
        raw_trees.check_report(reports[split], expected.problems[split], wanted, class_names)


def _split_of(filename, root):
    # The tree puts image i (img_<i>.jpg) in train when i is odd.
    index = int(filename.rsplit("img_", 1)[1][:3])
    return "train" if index % 2 else "test"


def test_imagenet_rejects_a_flat_val_without_labels(tmp_path):
    root = tmp_path / "ILSVRC2012"
    raw_trees_other.make_imagenet(str(root))
    with pytest.raises(FileNotFoundError, match="--val_labels_file or --val_annotations_dir"):
        imagenet.list_split(str(root), "val", ProblemLog(), list(raw_trees_other.SYNSETS))


def test_command_line_conversion_and_flag_errors(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    root = tmp_path / "CUB_200_2011"
    expected, _ = raw_trees_other.make_birds(str(root), nabirds=False)
    out = tmp_path / "out"
    base = [sys.executable, "-m", "data_prep.cub", f"--input_dir={root}", f"--output_dir={out}",
            "--workers=1", "--train_shards=2", "--test_shards=1", "--max_min_dim=48"]
    done = subprocess.run(base + ["--noprogress"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = [json.loads(line) for line in done.stdout.splitlines()]
    assert [s["split"] for s in summary] == ["train", "test"]
    assert sum(s["images"] for s in summary) == len(expected.stored)
    assert sorted(p.name for p in out.glob("t*-*")) == [
        "test-00000-of-00001", "train-00000-of-00002", "train-00001-of-00002"]
    failed = subprocess.run(base + ["--splits=train,bogus"], cwd=repo, capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "--splits: unknown split(s) bogus" in failed.stderr
    strict = subprocess.run(base + ["--strict", f"--output_dir={tmp_path / 'strict'}"],
                            cwd=repo, capture_output=True, text=True)
    assert strict.returncode == 1 and "images.txt:11: malformed line" in strict.stderr
