"""TNet on Megapixel MNIST: find 3 small digits of one class among 2 others and
line noise on a 1500 px canvas (docs/megapixel_mnist.md).

    python -m data_prep.megapixel_mnist --output_dir=/data/megapixel_mnist
    python -m experiments.megapixel_mnist --data_dir=/data/megapixel_mnist --output_dir=runs/mpm
    python -m experiments.megapixel_mnist --smoke --output_dir=/tmp/mpm_smoke   # about a minute
    python -m experiments.megapixel_mnist --stage=train_512 --data_dir=... --output_dir=...

The default `--stage=all` trains and evaluates (recipes.MEGAPIXEL_MNIST):
  1. train_512: TNet on the canvas downscaled to 512 px, 4 levels, [2, 2, 1]
     locations (the digits are 9.6 px in the level-4 cells);
  2. finetune_1500: 5 levels on the full canvas, [2, 2, 1, 1];
  3. baseline_64: the same CNN on the whole canvas at 64 px;
  4. mgnet_512: MGNet, 4 glimpses of 64 px from the 512 px canvas;
  5. report: <output_dir>/results.md and results.json (accuracy, GFLOPs,
     ms/image, hit rates against the target digits and location entropy per
     level), the accuracy-vs-GFLOPs plot and the attention of 16 test canvases.
`--stages=train_512,baseline_64` runs only those. A finished stage is kept when
the run starts again; an interrupted one resumes.
"""
import dataclasses
import sys
import time

from absl import app, flags

from experiments import recipes, runner, stages
from experiments.run_config import Entry

FLAGS = flags.FLAGS
TNET_STAGES = ("train_512", "finetune_1500")
BASELINES = ("baseline_64",)
MGNET_STAGES = ("mgnet_512",)
# --smoke: 256 px canvases of 14 px digits.
SMOKE_SPEC = {"canvas_size": 256, "digit_size": 14, "noise_patches": 10}


def make_smoke_data(folder: str) -> None:
    from data_prep import megapixel_mnist

    spec = megapixel_mnist.CanvasSpec(**SMOKE_SPEC)
    for split, count in (("train", 32), ("test", 16)):
        megapixel_mnist.write_split(folder, split, count, 2, seed=0, spec=spec)


ENTRY = Entry(dataset="megapixel_mnist", recipes=recipes.MEGAPIXEL_MNIST, eval_split="test",
              tnet_stages=TNET_STAGES, smoke_data=make_smoke_data, object_boxes=3)


def define_flags() -> None:
    runner.define_flags(ENTRY, default_stage="all", extra_stages=("all",))
    flags.DEFINE_list("stages", None, "--stage=all: the stages to run (default: every one).")
    flags.DEFINE_alias("output_dir", "model_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.model_dir is None:
        sys.exit("error: --output_dir: is required (the run folder)")
    if FLAGS.stage != "all":
        runner.run(ENTRY)
        return
    plan = FLAGS.stages or list(ENTRY.recipes)
    unknown = [stage for stage in plan if stage not in ENTRY.recipes]
    if unknown:
        sys.exit(f"error: --stages: {', '.join(unknown)} not among {', '.join(ENTRY.recipes)}")
    entry = dataclasses.replace(ENTRY, tnet_stages=tuple(s for s in TNET_STAGES if s in plan))
    if not entry.tnet_stages:
        sys.exit("error: --stages: the report needs a TNet stage (train_512 or finetune_1500)")
    started = time.time()
    runner.run_stages(entry, plan)
    from experiments import digits_report
    try:
        config = stages.prepare_data(runner.read_flags(entry, "evaluate"))
    except runner.FlagError as error:
        sys.exit(f"error: {error}")
    digits_report.report(config, [s for s in plan if s in BASELINES],
                         [s for s in plan if s in MGNET_STAGES])
    print(f"megapixel MNIST finished in {runner.minutes(time.time() - started)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
