"""Export a trained TNet stage as a SavedModel for serving stacks.

    python -m experiments.export --model_dir=runs/fmow/finetune_896 --export_dir=export/fmow
    python -m experiments.export --model_dir=runs/digits/finetune_256 \
        --export_dir=export/digits --budgets='2;2,1;2,2'
    python -m experiments.export --release_checkpoint=weights/fmow_tnet --dataset=fmow \
        --export_dir=export/fmow_release       # the authors' published TNet

The SavedModel loads with `tf.saved_model.load` alone (no tnet_tf) and
serves two signatures, documented in `tnet_tf/serving.py`:
  serving_default(images: encoded image bytes [B], locations: int32 [L])
  serving_images(images: float32 [B, S, S, 3] in [-1, 1], locations: int32 [L])
Both return logits, probabilities, the top classes with their names, and
the boxes and location probabilities of every level. `locations` picks one
of the exported budgets (--budgets, default the stage's budget and the
evaluation budgets its input size reaches); an empty one is the stage's.
"""
from __future__ import annotations

import sys
from typing import Optional

from absl import app, flags

from experiments import predict
from experiments.run_config import FlagError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "A trained TNet stage: RUN/STAGE (holds run.json).")
    predict.define_release_flags()
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes.")
    flags.DEFINE_string("budgets", None, "Budgets to serve, e.g. '2;2,1'; default: the "
                        "stage's and its evaluation budgets that its input size reaches.")
    flags.DEFINE_integer("input_size", None, "Model input size in px; default: the stage's.")


def export_stage(model_dir: Optional[str], export_dir: str, budgets=None, input_size=None,
                 **release) -> dict:
    """Exports the stage (with `release`, the authors' published TNet:
    `stages.restore_tnet`'s release_checkpoint, dataset and backbone); returns
    what was exported (budgets, default, size)."""
    import tensorflow as tf
    from experiments import stages
    from tnet_tf import budget as budget_lib, serving
    model, recipe, config, names = stages.restore_tnet(model_dir, **release)
    size = int(input_size or recipe.input_size)
    reach = budget_lib.reachable_levels(size, config.base_resolution, config.cell_fraction)
    default = budget_lib.fit(recipe.locations, reach)
    if budgets is None:
        budgets = [b for b in recipe.evaluation_budgets if budget_lib.levels_needed(b) <= reach]
    for locations in budgets:
        try:
            budget_lib.check(locations, config.grid_size)
            budget_lib.check_reachable(locations, size, config.base_resolution,
                                       config.cell_fraction)
        except ValueError as error:
            raise FlagError("budgets", str(error)) from None
    model(tf.zeros([1, size, size, 3]), locations=list(default), training=False)   # build
    signatures = serving.export(model, export_dir, budgets, default, names, size)
    return {"signatures": signatures, "budgets": sorted({tuple(b) for b in budgets} | {default}),
            "default": default, "input_size": size, "classes": len(names)}


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    from tnet_tf import budget as budget_lib
    try:
        if not FLAGS.export_dir:
            raise FlagError("export_dir", "is required")
        budgets = None
        if FLAGS.budgets:
            try:
                budgets = [budget_lib.parse(part) for part in FLAGS.budgets.split(";")]
            except ValueError as error:
                raise FlagError("budgets", str(error)) from None
        exported = export_stage(FLAGS.model_dir, FLAGS.export_dir, budgets, FLAGS.input_size,
                                **predict.release_options())
    except (FlagError, ValueError) as error:
        sys.exit(f"error: {error}")
    source = FLAGS.model_dir or FLAGS.release_checkpoint
    print(f"exported {source} to {FLAGS.export_dir}: signatures "
          f"{', '.join(exported['signatures'])}; {exported['input_size']} px input; budgets "
          f"{', '.join(str(list(b)) for b in exported['budgets'])} (default "
          f"{list(exported['default'])}); {exported['classes']} class names")


if __name__ == "__main__":
    define_flags()
    app.run(main)
