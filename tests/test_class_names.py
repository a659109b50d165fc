"""Class names from the converters' reports, saved with a stage and read back."""
import json

from data_prep import fmow
from experiments import class_names


def write(folder, name, payload):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(payload))


def test_names_come_from_the_report_by_label(tmp_path):
    write(tmp_path / "new", "train_report.json", {"class_names": ["cat", "dog", "eel"]})
    assert class_names.from_report(str(tmp_path / "new"), 3) == ["cat", "dog", "eel"]
    assert class_names.from_report(str(tmp_path / "new"), 4) is None     # another model
    # Reports written before "class_names" list the classes they hold, with labels.
    write(tmp_path / "old", "train_report.json",
          {"classes": {"eel": {"label": 2, "images": 1}, "cat": {"label": 0, "images": 3}}})
    assert class_names.from_report(str(tmp_path / "old"), 3) == ["cat", "class 1", "eel"]
    assert class_names.from_report(str(tmp_path / "none"), 3) is None
    assert class_names.from_report(None, 3) is None


def test_a_stage_without_saved_names_falls_back_to_its_dataset(tmp_path):
    write(tmp_path / "fmow", "run.json", {"dataset": "fmow"})
    assert class_names.load(str(tmp_path / "fmow"), 62) == list(fmow.CLASSES)
    write(tmp_path / "digits", "run.json", {"dataset": "digits"})
    assert class_names.load(str(tmp_path / "digits"), 10) == [str(d) for d in range(10)]
    write(tmp_path / "cub", "run.json", {"dataset": "cub"})
    assert class_names.load(str(tmp_path / "cub"), 2) == ["class 0", "class 1"]
    write(tmp_path / "cub", class_names.FILE, ["wren", "tit"])
    assert class_names.load(str(tmp_path / "cub"), 2) == ["wren", "tit"]
