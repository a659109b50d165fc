"""Class names travel with a trained stage: training writes the data's names
(`FILE`, beside run.json), and `predict` / `export` read them back, so that
predictions name classes instead of numbering them."""
from __future__ import annotations

import json
import os
from typing import List, Optional

FILE = "class_names.json"


def from_report(data_dir: Optional[str], num_classes: int) -> Optional[List[str]]:
    """The class names of the training split's data_prep report, by label: its
    "class_names", or for older reports its per-class counts (a class absent
    from them is named by its index); None when the report has no names."""
    path = os.path.join(data_dir or "", "train_report.json")
    if not data_dir or not os.path.exists(path):
        return None
    with open(path) as handle:
        report = json.load(handle)
    if report.get("class_names"):
        names = list(report["class_names"])
    elif report.get("classes"):
        names = numbered(num_classes)
        for name, counts in report["classes"].items():
            names[int(counts["label"])] = name
    else:
        return None
    return names if len(names) == num_classes else None


def save(config) -> None:
    """Writes the names of `config`'s training data into its stage folder (a
    `run_config.RunConfig`; the chief only, and only when the data has names)."""
    from experiments import run_config
    names = from_report(config.data_dir, config.model_config.num_classes)
    if names is not None and run_config.is_chief():
        with open(os.path.join(config.stage_dir(), FILE), "w") as handle:
            json.dump(names, handle, indent=0)


def load(folder: str, num_classes: int) -> List[str]:
    """A trained stage's class names: those saved with it, else its dataset's
    fixed ones (fMoW's 62 categories, the digits), else "class <index>"."""
    path = os.path.join(folder, FILE)
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    with open(os.path.join(folder, "run.json")) as handle:
        return for_dataset(json.load(handle).get("dataset"), num_classes)


def for_dataset(dataset: Optional[str], num_classes: int) -> List[str]:
    """A dataset's fixed class names (fMoW's 62 categories, the digits), else
    "class <index>"."""
    from data_prep import digits, fmow
    known = {"fmow": fmow.CLASSES, "digits": digits.CLASS_NAMES}.get(dataset)
    if known is not None and len(known) == num_classes:
        return list(known)
    return numbered(num_classes)


def numbered(num_classes: int) -> List[str]:
    return [f"class {k}" for k in range(num_classes)]
