"""Flags and the main routine shared by the `python -m data_prep.<dataset>` entry points.

Flags are defined only when a converter runs as a program (never on import),
so the converters can be imported side by side by tests and notebooks.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Dict, List, Sequence

from absl import flags

from data_prep import beam, shards
from data_prep.problems import BadInputError, ProblemLog

FLAGS = flags.FLAGS


def define_flags(shard_defaults: Dict[str, int], input_help: str) -> None:
    """The common flags plus `--<split>_shards` for every split in `shard_defaults`."""
    flags.DEFINE_string("input_dir", None, input_help)
    flags.DEFINE_string("output_dir", None, "Directory for the shards and the reports.")
    flags.DEFINE_list("splits", list(shard_defaults), "Splits to convert.")
    for split, count in shard_defaults.items():
        flags.DEFINE_integer(f"{split}_shards", count, f"Number of {split} shards.")
    flags.DEFINE_integer("max_min_dim", 1000, "Images whose shorter side exceeds this are "
                         "downscaled to it; 0 keeps every size.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes (--runner=local).")
    beam.define_flags()
    flags.DEFINE_bool("strict", False, "Stop at the first bad input instead of skipping or "
                      "fixing it.")
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
    flags.mark_flags_as_required(["input_dir", "output_dir"])


def options_from_flags(**extra) -> shards.Options:
    return shards.Options(output_dir=FLAGS.output_dir, workers=FLAGS.workers,
                          strict=FLAGS.strict, max_min_dim=FLAGS.max_min_dim,
                          progress=FLAGS.progress, runner=FLAGS.runner,
                          beam_options=tuple(beam.pipeline_options(FLAGS.beam_pipeline_options)),
                          **extra)


def check_splits(requested: Sequence[str], available: Sequence[str]) -> List[str]:
    unknown = [split for split in requested if split not in available]
    if unknown or not requested:
        raise ValueError(f"--splits: unknown split(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(available)}")
    return list(requested)


def run(list_split: Callable[[str, str, ProblemLog], list], prefixes: Dict[str, str],
        class_names: Sequence[str], options: shards.Options) -> None:
    """Lists and converts every split of `--splits`; prints a summary per split.

    `list_split(input_dir, split, log)` returns the split's items.
    """
    if not os.path.isdir(FLAGS.input_dir):
        sys.exit(f"error: --input_dir {FLAGS.input_dir} is not a directory")
    try:
        split_names = check_splits(FLAGS.splits, list(prefixes))
        splits = []
        for name in split_names:
            log = ProblemLog(options.strict)
            items = list_split(FLAGS.input_dir, name, log)
            splits.append(shards.Split(name, prefixes[name], FLAGS[f"{name}_shards"].value,
                                       class_names, items, log.problems, log.ignored))
        reports = shards.convert(splits, options)
    except (BadInputError, ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    for name, report in reports.items():
        print(json.dumps({"split": name, "images": report["images"],
                          "examples": report["examples"], "boxes": report["boxes"],
                          "skipped": len(report["skipped"]), "fixed": len(report["fixed"]),
                          "ignored": sum(report["ignored"].values()),
                          "report": os.path.join(options.output_dir, f"{name}_report.json")}))
