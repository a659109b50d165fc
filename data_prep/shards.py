"""The shared writer: items -> sharded TFRecords, a progress bar and a JSON report.

A converter lists each split as `Split` (the items to write plus the inputs
it already skipped or fixed while listing) and calls `convert`. Then:

- items are shuffled with a fixed seed and cut into `num_shards` contiguous
  shards `<prefix>-00000-of-NNNNN`;
- each shard is written by a worker process to `<name>.tmp`, its own report
  goes to `shard_reports/<name>.json`, and only then is the `.tmp` renamed:
  an interrupted run never leaves a partial shard, and a rerun skips every
  shard whose file and report exist and whose fingerprint (items and
  options) matches;
- `<output_dir>/<split>_report.json` gathers images, examples and boxes per
  class, every skipped or fixed input with its reason, and the number of
  files left out by design per reason ("ignored", e.g. fMoW's *_msrgb.jpg).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import random
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from data_prep import beam
from data_prep.images import Item, make_examples
from data_prep.problems import SKIP_ACTION, Problem, ProblemLog, SkipInput, sorted_problems
from tnet_tf.data.schema import shard_name

REPORT_DIR = "shard_reports"


@dataclasses.dataclass(frozen=True)
class Options:
    """How to write. `seed` fixes the assignment of images to shards."""
    output_dir: str
    workers: int = 1
    strict: bool = False
    max_min_dim: int = 1000
    bbox_crops: bool = False
    seed: int = 12345
    progress: bool = True
    runner: str = "local"           # "local" (a process pool of `workers`) or "beam"
    beam_options: Tuple[str, ...] = ()   # Beam pipeline options, as on Beam's command line


@dataclasses.dataclass
class Split:
    name: str                 # "train", "val", ...: names the report
    prefix: str               # shard prefix: "train", "validation", ...
    num_shards: int
    class_names: Sequence[str]
    items: List[Item]
    problems: List[Problem] = dataclasses.field(default_factory=list)
    ignored: Dict[str, int] = dataclasses.field(default_factory=dict)   # reason -> files


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    path: str
    items: Sequence[Item]
    class_names: Sequence[str]
    options: Options
    fingerprint: str


def convert(splits: Sequence[Split], options: Options) -> Dict[str, dict]:
    """Writes every split; returns the reports by split name."""
    if options.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {options.workers}")
    if options.runner not in beam.RUNNERS:
        raise ValueError(f"--runner must be one of {', '.join(beam.RUNNERS)}, got "
                         f"{options.runner!r}")
    os.makedirs(os.path.join(options.output_dir, REPORT_DIR), exist_ok=True)
    pool = None
    if options.workers > 1 and options.runner == "local":
        pool = multiprocessing.get_context("spawn").Pool(options.workers,
                                                         initializer=init_worker)
    try:
        return {split.name: _convert_split(split, options, pool) for split in splits}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def assign_shards(items: Sequence[Item], num_shards: int, seed: int) -> List[List[Item]]:
    """Shuffles items (sorted by filename first) with `seed`; cuts them into shards."""
    if num_shards < 1:
        raise ValueError(f"the number of shards must be >= 1, got {num_shards}")
    ordered = sorted(items, key=lambda item: item.filename)
    random.Random(seed).shuffle(ordered)
    bounds = [round(i * len(ordered) / num_shards) for i in range(num_shards + 1)]
    return [ordered[bounds[i]:bounds[i + 1]] for i in range(num_shards)]


def _convert_split(split: Split, options: Options, pool) -> dict:
    for stale in glob.glob(os.path.join(options.output_dir, f"{split.prefix}-*.tmp")):
        os.remove(stale)
    tasks, parts = [], {}
    for index, items in enumerate(assign_shards(split.items, split.num_shards, options.seed)):
        path = os.path.join(options.output_dir, shard_name(split.prefix, index, split.num_shards))
        fingerprint = _fingerprint(items, split.class_names, options)
        part = _finished_part(path, fingerprint)
        if part is None:
            tasks.append(_ShardTask(path, items, split.class_names, options, fingerprint))
        else:
            parts[os.path.basename(path)] = part
    progress = _Progress(len(split.items), split.name, len(parts), options.progress)
    progress.add(sum(part["inputs"] for part in parts.values()))
    if options.runner == "beam" and tasks:
        beam.run_tasks(write_shard, tasks, os.path.join(options.output_dir, REPORT_DIR),
                       split.prefix, options.beam_options)
        results = [_finished_part(task.path, task.fingerprint) for task in tasks]
    else:
        results = pool.imap_unordered(write_shard, tasks) if pool else map(write_shard, tasks)
    for part in results:
        parts[part["shard"]] = part
        progress.add(part["inputs"])
    progress.done()
    report = _report(split, [parts[name] for name in sorted(parts)])
    _write_json_atomically(os.path.join(options.output_dir, f"{split.name}_report.json"), report)
    return report


def write_shard(task: _ShardTask) -> dict:
    """Writes one shard to `<path>.tmp`, then its report, then renames it into place."""
    import tensorflow as tf  # the parent may not need TensorFlow at all

    log = ProblemLog(task.options.strict)
    per_class: Dict[int, Dict[str, int]] = {}
    temporary = task.path + ".tmp"

    def count(label: int, key: str) -> None:
        per_class.setdefault(label, {"images": 0, "examples": 0, "boxes": 0})[key] += 1

    with tf.io.TFRecordWriter(temporary) as writer:
        for item in task.items:
            try:
                examples = make_examples(item, task.class_names, task.options.max_min_dim,
                                         task.options.bbox_crops, log)
            except SkipInput as reason:
                log.skip(item.filename, str(reason))
                continue
            count(item.label, "images")
            for serialized, label, box_labels in examples:
                writer.write(serialized)
                count(label, "examples")
                for box_label in box_labels:
                    count(box_label, "boxes")
    part = {
        "shard": os.path.basename(task.path),
        "fingerprint": task.fingerprint,
        "inputs": len(task.items),
        "per_class": {str(label): counts for label, counts in sorted(per_class.items())},
        "problems": sorted_problems(log.problems),
    }
    _write_json_atomically(_part_path(task.path), part)
    os.replace(temporary, task.path)
    return part


def _report(split: Split, parts: List[dict]) -> dict:
    classes = {name: {"label": label, "images": 0, "examples": 0, "boxes": 0}
               for label, name in enumerate(split.class_names)}
    for part in parts:
        for label, counts in part["per_class"].items():
            for key, value in counts.items():
                classes[split.class_names[int(label)]][key] += value
    problems = sorted_problems(split.problems) + [p for part in parts for p in part["problems"]]
    problems.sort(key=lambda p: (p["file"], p["reason"], p["action"]))
    totals = {key: sum(c[key] for c in classes.values()) for key in ("images", "examples", "boxes")}
    return {
        "split": split.name,
        "shards": [part["shard"] for part in parts],
        **totals,
        "class_names": list(split.class_names),
        "classes": {name: counts for name, counts in classes.items()
                    if counts["images"] or counts["examples"] or counts["boxes"]},
        "skipped": [p for p in problems if p["action"] == SKIP_ACTION],
        "fixed": [p for p in problems if p["action"] != SKIP_ACTION],
        "ignored": dict(sorted(split.ignored.items())),
    }


def _fingerprint(items: Sequence[Item], class_names, options: Options) -> str:
    content = json.dumps([
        [dataclasses.asdict(item) for item in items], list(class_names),
        options.max_min_dim, options.bbox_crops], sort_keys=True, default=str)
    return hashlib.sha1(content.encode()).hexdigest()


def _part_path(shard_path: str) -> str:
    folder, name = os.path.split(shard_path)
    return os.path.join(folder, REPORT_DIR, name + ".json")


def _finished_part(path: str, fingerprint: str) -> Optional[dict]:
    if not os.path.exists(path) or not os.path.exists(_part_path(path)):
        return None
    try:
        with open(_part_path(path)) as stream:
            part = json.load(stream)
    except (OSError, ValueError):
        return None
    return part if part.get("fingerprint") == fingerprint else None


def _write_json_atomically(path: str, content) -> None:
    with open(path + ".tmp", "w") as stream:
        json.dump(content, stream, indent=1, sort_keys=False)
        stream.write("\n")
    os.replace(path + ".tmp", path)


def init_worker():
    """Worker process setup: quiet TensorFlow, one core per worker."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # One core per worker process.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


class _Progress:
    """A one-line progress bar on stderr (images done / total)."""

    def __init__(self, total: int, name: str, finished_shards: int, enabled: bool):
        self.total, self.name, self.count, self.enabled = total, name, 0, enabled
        if enabled and finished_shards:
            print(f"{name}: {finished_shards} finished shard(s) kept from an earlier run",
                  file=sys.stderr)

    def add(self, count: int) -> None:
        self.count += count
        if self.enabled:
            width = 30
            filled = width * self.count // max(self.total, 1)
            print(f"\r{self.name}: [{'=' * filled}{'.' * (width - filled)}] "
                  f"{self.count}/{self.total} images", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)
