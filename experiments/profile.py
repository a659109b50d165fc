"""Profile preset models: parameters, FLOPs (eq. 11 and TF profiler), ms/image, memory.

Prints a table on stdout and, with --json=PATH, writes a JSON list holding one
object per (model, input size, location budget), one object per line.

The rows of Table 2 (fMoW, EfficientNet-B0) in one run:

    python -m experiments.profile --preset=fmow --model=baseline,tnet \
        --input_size=224,448,896 \
        --locations='224:0;448:1;448:2;448:3;896:2,1;896:2,2' --json=/tmp/table2.json

(params and FLOPs of these 9 rows take about 3 minutes on 2 CPU cores; each
row traces its model once on a single image), and of Table 1 (ImageNet,
BagNet-77, all at 224):

    python -m experiments.profile --preset=imagenet --model=baseline,tnet \
        --locations='0;1;2;3;5'

(about 1 minute). MGNet (`--model=mgnet`) beside the ResNet-50 baseline, as
in the MGNet paper's Table 1 (ImageNet-100: 3.172 and 4.104 GFLOPs):

    python -m experiments.profile --model=mgnet --backbone=resnet50 --num_classes=100 \
        --input_size=224 --glimpses=1,2,3,4 --glimpse_size=96
    python -m experiments.profile --model=baseline --backbone=resnet50 --num_classes=100 \
        --input_size=224

Add --measure=params,flops,time,memory for ms/image (--batch_size=64,
--num_batches=200, --warmup_batches=10 follow the paper; lower them on a CPU)
and peak memory (device allocator peak on GPU/TPU; on CPU the process peak RSS,
which only grows during the run, so measure one row per process there).

Flags:
  --model: comma list of tnet, baseline, mgnet. Baseline rows ignore
    --locations; MGNet rows take --glimpses instead.
  --backbone, --num_classes: override the preset's (e.g. resnet50, 100).
  --glimpses: comma list of MGNet glimpse counts (early exits of one model of
    T = the largest); --glimpse_size: MGNet's glimpse side in px (default
    the preset's base resolution).
  --input_size: comma list of input sides in px; default the preset's.
  --locations: location budgets of TNet, separated by ';' or given as repeated
    flags. A budget is a comma list of locations per level below the first
    ('2' for two levels, '2,1' for three: 2 cells at level 2, 1 per parent at
    level 3). A budget written 'SIZE:BUDGET' is used at that input size only
    (when --input_size is not given, the sizes of such budgets are profiled);
    other budgets are used at every size. Default: the preset's budget.
  --measure: comma list of params, flops (eq. 11 and the TF profiler), time,
    memory. Rows hold None (table: '-') for what was not measured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app, flags

from experiments.run_config import FlagError

MODELS = ("tnet", "baseline", "mgnet")
MEASURES = ("params", "flops", "time", "memory")

flags.DEFINE_enum("preset", "fmow", ["imagenet", "fmow", "cub", "nabirds"],
                  "Named model configuration (tnet_tf.get_preset).")
flags.DEFINE_string("model", "tnet", "Comma list of tnet, baseline, mgnet.")
flags.DEFINE_string("backbone", None, "Backbone name instead of the preset's, e.g. resnet50.")
flags.DEFINE_integer("num_classes", None, "Classes instead of the preset's.")
flags.DEFINE_string("glimpses", "4", "MGNet: comma list of glimpse counts (early exits).")
flags.DEFINE_integer("glimpse_size", None, "MGNet: glimpse side in px; default the preset's "
                     "base resolution.")
flags.DEFINE_string("input_size", None, "Comma list of input sizes in px; default: the preset's.")
flags.DEFINE_multi_string("locations", None,
                          "TNet location budgets, e.g. '2' or '2,1'; several separated by ';' or "
                          "repeated flags; 'SIZE:BUDGET' pins a budget to one input size.")
flags.DEFINE_string("measure", "params,flops", "Comma list of params, flops, time, memory.")
flags.DEFINE_integer("batch_size", 64, "Batch size for time and memory.")
flags.DEFINE_integer("num_batches", 200, "Timed batches.")
flags.DEFINE_integer("warmup_batches", 10, "Discarded warm-up batches before timing.")
flags.DEFINE_string("json", None, "Write the rows to this JSON file.")

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Run:
    """One row to profile."""

    model: str
    input_size: int
    locations: Optional[Tuple[int, ...]]  # None for baselines and MGNet
    glimpses: Optional[int] = None         # MGNet only


def _split(text: str, flag: str) -> List[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise FlagError(flag, f"empty item in {text!r}")
    return items


def _parse_int(text: str, flag: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FlagError(flag, f"{text!r} is not an integer") from None
    if value < minimum:
        raise FlagError(flag, f"{value} must be >= {minimum}")
    return value


def parse_budgets(values: Sequence[str]) -> List[Tuple[Optional[int], Tuple[int, ...]]]:
    """'--locations' values -> [(pinned input size or None, per-level budget)]."""
    from tnet_tf import budget  # pylint: disable=g-import-not-at-top

    try:
        budgets = [pair for value in values for pair in budget.parse_sized(value)]
    except ValueError as error:
        raise FlagError("locations", str(error)) from None
    if not budgets:
        raise FlagError("locations", "no budget given")
    return budgets


def plan_runs(preset: str, models: str, input_size: Optional[str],
              locations: Optional[Sequence[str]], glimpses: str = "4",
              glimpse_size: Optional[int] = None) -> List[Run]:
    """Validates the model flags and lists the rows, before building anything."""
    import tnet_tf  # pylint: disable=g-import-not-at-top

    config = tnet_tf.get_preset(preset)
    model_names = _split(models, "model")
    for name in model_names:
        if name not in MODELS:
            raise FlagError("model", f"{name!r} is not one of {', '.join(MODELS)}")
    budgets = None
    if locations:
        if "tnet" not in model_names:
            raise FlagError("locations", "location budgets apply to --model=tnet only")
        budgets = parse_budgets(locations)
    if input_size is not None:
        sizes = [_parse_int(s, "input_size", 32) for s in _split(input_size, "input_size")]
    elif budgets and all(size is not None for size, _ in budgets):
        sizes = sorted({size for size, _ in budgets})
    else:
        sizes = [config.input_size]
    sizes = list(dict.fromkeys(sizes))
    for pinned, budget in budgets or []:
        if pinned is not None and pinned not in sizes:
            raise FlagError("locations", f"budget {pinned}:{','.join(map(str, budget))} is "
                                         f"pinned to a size missing from --input_size {sizes}")

    counts = sorted({_parse_int(g, "glimpses", 1) for g in _split(glimpses, "glimpses")})
    if glimpse_size is not None and "mgnet" in model_names and glimpse_size > min(sizes):
        raise FlagError("glimpse_size", f"{glimpse_size} px is larger than the input size "
                                        f"{min(sizes)}")
    runs = []
    for name in model_names:
        for size in sizes:
            if name == "baseline":
                runs.append(Run(name, size, None))
                continue
            if name == "mgnet":
                runs += [Run(name, size, None, count) for count in counts]
                continue
            for pinned, budget in budgets or [(None, config.locations)]:
                if pinned in (None, size):
                    _check_tnet_budget(config, size, budget)
                    runs.append(Run(name, size, budget))
    return runs


def _check_tnet_budget(config, size: int, locations: Tuple[int, ...]) -> None:
    from tnet_tf import budget  # pylint: disable=g-import-not-at-top

    if size < config.base_resolution:
        raise FlagError("input_size", f"{size} px is smaller than the {config.base_resolution} "
                                      f"px base resolution of TNet")
    try:
        budget.check(locations, config.grid_size)
        budget.check_reachable(locations, size, config.base_resolution, config.cell_fraction)
    except ValueError as error:
        raise FlagError("locations", str(error)) from None


def parse_measures(text: str) -> Tuple[str, ...]:
    measures = _split(text, "measure")
    for name in measures:
        if name not in MEASURES:
            raise FlagError("measure", f"{name!r} is not one of {', '.join(MEASURES)}")
    return tuple(dict.fromkeys(measures))


def build_model(preset: str, run: Run, **overrides):
    """The preset's TNet, baseline classifier or MGNet for one row, with its
    call kwargs. `overrides`: TNetConfig fields (backbone, num_classes) and,
    for MGNet, glimpse_size; an MGNet row builds T = its glimpse count."""
    import tnet_tf  # pylint: disable=g-import-not-at-top

    mgnet_fields = {k: overrides.pop(k) for k in ("glimpse_size",) if k in overrides}
    if run.model == "baseline":
        return tnet_tf.Classifier(tnet_tf.get_preset(preset, **overrides),
                                  input_size=run.input_size), {}
    if run.model == "mgnet":
        config = tnet_tf.get_preset(preset, input_size=run.input_size, **overrides)
        mgnet_fields.setdefault("glimpse_size", min(config.base_resolution, run.input_size))
        return (tnet_tf.MGNet(tnet_tf.MGNetConfig.from_tnet(config, glimpses=run.glimpses,
                                                            **mgnet_fields)),
                {"glimpses": run.glimpses})
    config = tnet_tf.get_preset(preset, input_size=run.input_size, locations=run.locations,
                                **overrides)
    return tnet_tf.TNet(config), {"locations": list(run.locations)}


def profile_run(preset: str, run: Run, measures: Sequence[str], batch_size: int,
                num_batches: int, warmup_batches: int, **overrides):
    """Builds the row's model and measures it; returns (ProfileRow, extra JSON fields)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tnet_tf import budget, profiling  # pylint: disable=g-import-not-at-top

    tf.keras.backend.clear_session()
    model, call_kwargs = build_model(preset, run, **overrides)
    shape = (run.input_size, run.input_size, 3)
    row = profiling.ProfileRow(run.model, run.input_size, run.locations, run.glimpses)
    if "params" in measures or "flops" in measures:
        # One batch-1 trace builds the model and serves both FLOPs counters.
        graph = profiling.trace(model, shape, **call_kwargs).graph
        if "params" in measures:
            row.params = profiling.count_params(model)
        if "flops" in measures:
            row.flops = profiling.graph_flops_eq11(graph)
            row.flops_profiler = profiling.graph_flops_profiler(graph)
    if "time" in measures:
        row.ms_per_image, row.ms_per_image_std = profiling.measure_time(
            model, shape, batch_size, num_batches, warmup_batches, **call_kwargs)
    if "memory" in measures:
        row.peak_memory_bytes, row.memory_method = profiling.measure_peak_memory(
            model, shape, batch_size, **call_kwargs)
    extra = {"preset": preset,
             "total_locations": (None if run.locations is None
                                 else budget.total_locations(run.locations))}
    if "time" in measures:
        extra.update(batch_size=batch_size, num_batches=num_batches,
                     warmup_batches=warmup_batches)
    return row, extra


def write_json(path: str, records: Sequence[dict]) -> None:
    """A JSON list with one row object per line."""
    lines = ",\n".join("  " + json.dumps(record, sort_keys=True) for record in records)
    with open(path, "w") as f:
        f.write("[\n" + lines + "\n]\n")


def model_overrides() -> dict:
    """--backbone, --num_classes and --glimpse_size as model overrides (validated)."""
    import tnet_tf  # pylint: disable=g-import-not-at-top
    from tnet_tf.config import BACKBONES  # pylint: disable=g-import-not-at-top

    overrides = {}
    if FLAGS.backbone is not None:
        if FLAGS.backbone not in BACKBONES:
            raise FlagError("backbone", f"{FLAGS.backbone!r} is not one of {', '.join(BACKBONES)}")
        overrides["backbone"] = FLAGS.backbone
    if FLAGS.num_classes is not None:
        overrides["num_classes"] = _parse_int(str(FLAGS.num_classes), "num_classes", 1)
    if FLAGS.glimpse_size is not None and "mgnet" in FLAGS.model:
        overrides["glimpse_size"] = _parse_int(str(FLAGS.glimpse_size), "glimpse_size", 32)
    tnet_tf.get_preset(FLAGS.preset, **{k: v for k, v in overrides.items()
                                        if k in ("backbone", "num_classes")})
    return overrides


def _validated_settings():
    runs = plan_runs(FLAGS.preset, FLAGS.model, FLAGS.input_size, FLAGS.locations,
                     FLAGS.glimpses, FLAGS.glimpse_size)
    measures = parse_measures(FLAGS.measure)
    if FLAGS.batch_size < 1:
        raise FlagError("batch_size", f"{FLAGS.batch_size} must be >= 1")
    if FLAGS.num_batches < 1:
        raise FlagError("num_batches", f"{FLAGS.num_batches} must be >= 1")
    if FLAGS.warmup_batches < 0:
        raise FlagError("warmup_batches", f"{FLAGS.warmup_batches} must be >= 0")
    if FLAGS.json:
        folder = os.path.dirname(os.path.abspath(FLAGS.json))
        if not os.path.isdir(folder):
            raise FlagError("json", f"folder {folder} does not exist")
    return runs, measures, model_overrides()


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    try:
        runs, measures, overrides = _validated_settings()
    except FlagError as error:
        sys.exit(f"error: {error}")

    from tnet_tf import profiling  # pylint: disable=g-import-not-at-top

    rows, records = [], []
    for run in runs:
        row, extra = profile_run(FLAGS.preset, run, measures, FLAGS.batch_size,
                                 FLAGS.num_batches, FLAGS.warmup_batches, **overrides)
        rows.append(row)
        records.append({**row.to_dict(), **extra})
        what = (f"{run.glimpses} glimpses" if run.model == "mgnet"
                else f"locations {run.locations}")
        print(f"profiled {run.model} at {run.input_size} px, {what}",
              file=sys.stderr, flush=True)
    print(f"{FLAGS.preset}: eq. 11 counts multiplications; the TF profiler counts a "
          f"multiply-add as 2 FLOPs plus element-wise ops.")
    print(profiling.format_table(rows))
    if FLAGS.json:
        write_json(FLAGS.json, records)
        print(f"wrote {len(records)} rows to {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
