"""The embedded demo: TNet learns where to look on cluttered handwritten digits.

    python -m experiments.digits --model_dir=runs/digits                       # stage 1
    python -m experiments.digits --model_dir=runs/digits --stage=finetune_256  # 3 levels
    python -m experiments.digits --model_dir=runs/digits --stage=baseline_64
    python -m experiments.digits --model_dir=runs/digits --stage=evaluate
    python -m experiments.digits --model_dir=runs/digits --stage=visualize

The data (scikit-learn's real 8x8 digit scans, one per 256 px canvas among
clutter; `data_prep/digits.py`) is generated into `<model_dir>/data` when
`--data_dir` holds none. The stages mirror the fMoW recipe: 2 levels on the
canvas downscaled to 128 px (base 64, 3x3 grid, 2 locations), then 3 levels
on the full 256 px canvas with [2, 1] locations, and baselines on the whole
canvas at 64 and 256 px, all with the same compact backbone.
"""
from absl import app, flags

from data_prep import digits
from experiments import recipes, runner

flags.DEFINE_integer("train_size", 20000, "Training canvases to generate.")
flags.DEFINE_integer("test_size", 2000, "Test canvases to generate.")


def generate(folder: str) -> None:
    for split, count, shards in (("train", flags.FLAGS.train_size, 16),
                                 ("test", flags.FLAGS.test_size, 4)):
        digits.write_split(folder, split, count, min(shards, count), seed=0)


ENTRY = runner.Entry(dataset="digits", recipes=recipes.DIGITS, eval_split="test",
                     tnet_stages=("train_128", "finetune_256"), generate_data=generate)
runner.define_flags(ENTRY, default_stage="train_128")

main = runner.main_for(ENTRY)


if __name__ == "__main__":
    app.run(main)
