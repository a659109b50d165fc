"""The embedded demo: TNet learns where to look on cluttered handwritten digits.

    python -m experiments.digits                        # the whole demo, about 15 min
    python -m experiments.digits --quick                # a few minutes, runs/digits_quick
    python -m experiments.digits --seed=1 --output_dir=runs/digits_seed1
    python -m experiments.digits --no_per_feature_reg --output_dir=runs/digits_no_reg
    python -m experiments.digits --full_res_baseline    # also the 256 px baseline
    python -m experiments.digits --stage=finetune_256   # one stage of the run

The default `--stage=all` generates the data into `<output_dir>/data` when
`--data_dir` holds none (scikit-learn's real 8x8 digit scans, one per 256 px
canvas among clutter; `data_prep/digits.py`), then trains and evaluates:
  1. train_128: TNet, 2 levels on the canvas downscaled to 128 px (base 64,
     3x3 grid of 50 % cells, 2 locations);
  2. finetune_256: 3 levels on the full 256 px canvas, [2, 1] locations;
  3. baseline_64 (and baseline_256 with --full_res_baseline): the same
     backbone on the whole canvas;
  4. mgnet_256: MGNet (tnet_tf.MGNet) with the same backbone, 4 glimpses of
     64 px from the 256 px canvas;
  5. report: every budget of TNet, every glimpse count of MGNet and the
     baselines -> <output_dir>/results.md
     and results.json (accuracy, GFLOPs, ms/image, share of the canvas seen at
     full resolution, policy hit rates with their chance values), the
     accuracy-vs-GFLOPs plot and the attention of 16 test canvases.
A finished stage is skipped when the run is started again, and an interrupted
one resumes from its last backup, so an interrupted run loses little.
"""
import dataclasses
import functools
import json
import os
import sys
import time

from absl import app, flags

from data_prep import digits
from experiments import recipes, runner, stages
from experiments.run_config import Entry

FLAGS = flags.FLAGS
SIZES = {False: (20000, 2000), True: (4000, 1000)}     # (train, test) canvases by --quick
TNET_STAGES = ("train_128", "finetune_256")
BASELINES = ("baseline_64", "baseline_256")
MGNET_STAGES = ("mgnet_256",)
# generate_data is bound to the canvas counts of the command in `main`.
ENTRY = Entry(dataset="digits", recipes=recipes.DIGITS, eval_split="test",
              tnet_stages=TNET_STAGES)


def define_flags() -> None:
    flags.DEFINE_integer("train_size", None, "Training canvases to generate (default 20000; "
                         "--quick: 4000).")
    flags.DEFINE_integer("test_size", None, "Test canvases to generate (default 2000; "
                         "--quick: 1000).")
    flags.DEFINE_bool("quick", False, "A few-minute version: fewer canvases and steps "
                      "(default output_dir runs/digits_quick).")
    flags.DEFINE_bool("full_res_baseline", False, "--stage=all: also train and report the "
                      "baseline on the whole 256 px canvas.")
    flags.DEFINE_bool("no_per_feature_reg", False, "Train TNet by eq. (1) alone "
                      "(lambda_c = lambda_r = 1): the ablation of per-feature regularization.")
    runner.define_flags(ENTRY, default_stage="all", extra_stages=("all",))
    flags.DEFINE_alias("output_dir", "model_dir")


def sizes():
    train, test = SIZES[FLAGS.quick]
    return FLAGS.train_size or train, FLAGS.test_size or test


def generate(folder: str, sizes=SIZES[False]) -> None:
    """Writes `sizes` (train, test) canvases into `folder`."""
    for split, count, shards in zip(("train", "test"), sizes, (16, 4)):
        digits.write_split(folder, split, count, min(shards, count), seed=0, workers=2,
                           progress=True)


def check_generated_data() -> None:
    """Stops with a one-line error if the data generated earlier in the output
    folder has another size than the flags ask for."""
    folder = os.path.join(FLAGS.model_dir, "data")
    for split, wanted in zip(("train", "test"), sizes()):
        report = os.path.join(folder, f"{split}_report.json")
        if os.path.exists(report):
            with open(report) as handle:
                found = json.load(handle)["images"]
            if found != wanted:
                sys.exit(f"error: --{split}_size: {folder} holds {found} {split} canvases, not "
                         f"{wanted}; choose another --output_dir or pass --data_dir={folder}")


def stage_recipes():
    """The digits recipes with --quick and --no_per_feature_reg applied."""
    chosen = dict(recipes.DIGITS_QUICK if FLAGS.quick else recipes.DIGITS)
    if FLAGS.no_per_feature_reg:
        for stage in TNET_STAGES:
            chosen[stage] = chosen[stage].replace(lambda_c=1.0, lambda_r=1.0)
    return chosen


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.model_dir is None:
        FLAGS.model_dir = "runs/digits_quick" if FLAGS.quick else "runs/digits"
    entry = dataclasses.replace(ENTRY, recipes=stage_recipes(),
                                generate_data=functools.partial(generate, sizes=sizes()))
    if FLAGS.data_dir is None and not FLAGS.smoke:     # --smoke makes its own tiny data
        check_generated_data()
        FLAGS.data_dir = os.path.join(FLAGS.model_dir, "data")
    if FLAGS.stage != "all":
        runner.run(entry)
        return
    started = time.time()
    plan = list(entry.recipes)
    if not FLAGS.full_res_baseline:
        plan.remove("baseline_256")
    runner.run_stages(entry, plan)
    from experiments import digits_report
    try:
        config = stages.prepare_data(runner.read_flags(entry, "evaluate"))
    except runner.FlagError as error:
        sys.exit(f"error: {error}")
    digits_report.report(config, [s for s in plan if s in BASELINES],
                         [s for s in plan if s in MGNET_STAGES])
    print(f"digits demo finished in {runner.minutes(time.time() - started)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
