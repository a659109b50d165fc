"""TNet on Megapixel MNIST: find 3 small digits of one class among 2 others and
line noise on a 1500 px canvas (docs/megapixel_mnist.md).

    python -m data_prep.megapixel_mnist --output_dir=/data/megapixel_mnist
    python -m experiments.megapixel_mnist --data_dir=/data/megapixel_mnist --output_dir=runs/mpm
    python -m experiments.megapixel_mnist --smoke --output_dir=/tmp/mpm_smoke   # about 2.5 min
    python -m experiments.megapixel_mnist --stage=train_1500 --data_dir=... --output_dir=...

The default `--stage=all` trains and evaluates (recipes.MEGAPIXEL_MNIST):
  1. pretrain_digits (before the TNet stage): the backbone as a digit classifier
     on glimpses of the training canvases' target digits (`pretrain_backbone`);
  2. train_1500: TNet on the full canvas from those weights, 3 levels, [4, 1]
     locations (192 px base, 7x7 grid of quarter cells: 14 px digits at level 2,
     57 px at level 3);
  3. baseline_64: the demo's CNN on the whole canvas at 64 px;
  4. mgnet_512: MGNet, 4 glimpses of 64 px from the 512 px canvas;
  5. mgnet_oracle_512 (with mgnet_512): MGNet of the same recipe whose glimpses
     2-4 are handed the 3 target digits' boxes (`mgnet.regions_around`), trained
     and tested that way: can MGNet classify once it looks at the digits?
  6. report: <output_dir>/results.md and results.json (accuracy, GFLOPs,
     ms/image, hit rates against the target digits and location entropy per
     level), the accuracy-vs-GFLOPs plot and the attention of 16 test canvases.
`--stages=train_1500,baseline_64` runs only those. A finished stage is kept when
the run starts again; an interrupted one resumes.
"""
import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from experiments import recipes, runner, stages
from experiments.run_config import Entry, RunConfig

FLAGS = flags.FLAGS
TNET_STAGES = ("train_1500",)
BASELINES = ("baseline_64",)
MGNET_STAGES = ("mgnet_512",)
# The backbone's digit pretraining (pretrain_backbone): glimpse sides between a
# level-3 and a level-2 cell of the recipe (1/16 and 1/4 of the canvas).
PRETRAIN_STAGE = "pretrain_digits"
PRETRAIN_SCALES = (0.0625, 0.25)
PRETRAIN_EPOCHS = 2
# --smoke: 256 px canvases of 14 px digits.
SMOKE_SPEC = {"canvas_size": 256, "digit_size": 14, "noise_patches": 10}


def make_smoke_data(folder: str) -> None:
    from data_prep import megapixel_mnist

    spec = megapixel_mnist.CanvasSpec(**SMOKE_SPEC)
    for split, count in (("train", 32), ("test", 16)):
        megapixel_mnist.write_split(folder, split, count, 2, seed=0, spec=spec)


ENTRY = Entry(dataset="megapixel_mnist", recipes=recipes.MEGAPIXEL_MNIST, eval_split="test",
              tnet_stages=TNET_STAGES, smoke_data=make_smoke_data, object_boxes=3)


def canvases_with_boxes(run: RunConfig, split: str, size: int, batch_size: int,
                        repeat: bool):
    """(canvases at `size` px, labels, the target digits' boxes [B, 3, 4]); the
    whole-canvas resize keeps the boxes where they are (the recipes have no
    augmentation); repeated, the shards are read in a seeded random order."""
    from tnet_tf.data import pipeline

    inputs = pipeline.input_config_for(
        run.entry.dataset, file_pattern=run.shard_pattern(split), image_size=size,
        batch_size=batch_size, training=False, with_object_box=True,
        object_boxes=run.entry.object_boxes, repeat=repeat, deterministic=not repeat,
        seed=run.seed)
    return pipeline.make_dataset(inputs)


def glimpse_squares(boxes, scales=PRETRAIN_SCALES, seed=None):
    """Boxes [N, 4] -> squares [N, 4] (edge-normalised y1, x1, y2, x2) of side s,
    log-uniform in `scales`, each holding its box at a uniform position inside
    the canvas (a box larger than s is cut)."""
    import tensorflow as tf

    boxes = tf.cast(boxes, tf.float32)
    low, high = [float(v) for v in scales]
    side = tf.exp(tf.random.uniform([tf.shape(boxes)[0], 1], tf.math.log(low),
                                    tf.math.log(high), seed=seed))
    lowest = tf.maximum(boxes[:, 2:] - side, 0.0)           # the top-left corner's range
    highest = tf.minimum(boxes[:, :2], 1.0 - side)
    corner = lowest + tf.random.uniform(tf.shape(lowest), seed=seed) * tf.maximum(
        highest - lowest, 0.0)
    return tf.concat([corner, corner + side], axis=-1)


def digit_glimpses(images, labels, boxes, base: int, scales=PRETRAIN_SCALES):
    """Per target digit (boxes [B, M, 4]) a glimpse [base, base, 3] of its
    `glimpse_squares` square, labelled by the digit's class (the canvas label)."""
    import tensorflow as tf

    batch, count = tf.shape(boxes)[0], tf.shape(boxes)[1]
    squares = glimpse_squares(tf.reshape(boxes, [-1, 4]), scales)
    glimpses = tf.image.crop_and_resize(images, squares, tf.repeat(tf.range(batch), count),
                                        [base, base])
    return glimpses, tf.repeat(tf.cast(labels, tf.int32), count)


def _fit(run: RunConfig, recipe, model_config, data, folder: str):
    """Builds, compiles and fits the recipe's model on `data` (an epoch: the
    training canvases over the recipe's batch; 2 steps with --smoke), with
    backups in `folder` so that an interrupted fit resumes; returns it."""
    import tensorflow as tf

    from tnet_tf import checkpoints
    examples = stages.count_examples(run, "train", recipe)
    steps = run.steps_per_epoch or max(1, examples // recipe.global_batch_size)
    if run.smoke:
        steps = min(steps, 2)
    tf.keras.utils.set_random_seed(run.seed)
    model = stages.build_model(recipe, model_config)
    stages.compile_model(model, recipe, steps * recipe.epochs, run_eagerly=run.smoke)
    model.fit(data, epochs=recipe.epochs, steps_per_epoch=steps, verbose=2 if run.smoke else 1,
              callbacks=checkpoints.training_callbacks(folder, save_every=run.save_every))
    return model


def pretrain_backbone(run: RunConfig, stage: str = PRETRAIN_STAGE) -> str:
    """Trains the backbone and classifier of the TNet stage `run` as a digit
    classifier on glimpses of the training canvases' target digits
    (`digit_glimpses`), into <output_dir>/pretrain_digits/final, which the TNet
    recipe starts from (as the paper's TNets start from ImageNet weights). Kept
    when it exists."""
    import tensorflow as tf

    folder = os.path.join(run.model_dir, stage)
    final = os.path.join(folder, "final")
    if os.path.exists(os.path.join(final, "checkpoint")):
        return final
    base, batch = run.model_config.base_resolution, 16
    recipe = run.recipe.replace(model="baseline", epochs=1 if run.smoke else PRETRAIN_EPOCHS,
                                lr_schedule="cosine", input_size=base, global_batch_size=batch)
    data = canvases_with_boxes(run, "train", run.recipe.input_size, batch, repeat=True).map(
        lambda images, labels, boxes: digit_glimpses(images, labels, boxes, base))
    print(f"{stage}: {recipe.epochs} epochs of {batch} canvases a step (3 digit glimpses "
          f"each, {base} px, sides {PRETRAIN_SCALES[0]:g}-{PRETRAIN_SCALES[1]:g} of the canvas)")
    model = _fit(run, recipe, run.model_config, data, folder)
    stages.save_final_weights(model, final, tf.distribute.get_strategy())
    print(f"{stage}: final weights in {final}")
    return final


def oracle_row(run: RunConfig, stage: str = "mgnet_512") -> dict:
    """Trains and tests MGNet with glimpses 2..T fixed on the target digits (the
    stage's recipe; regions of its smallest scale centred on each digit box).
    The row is kept in <output_dir>/mgnet_oracle_512/row.json for reruns; an
    interrupted training resumes from its backup there."""
    from tnet_tf import mgnet, profiling
    from experiments import digits_report

    path = os.path.join(run.model_dir, f"mgnet_oracle_{stage.split('_')[-1]}", "row.json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    stage_run = runner.read_flags(run.entry, stage)         # the recipe with the flags applied
    recipe, config = stage_run.recipe, stage_run.model_config
    scale = config.min_scale
    regions = lambda images, labels, boxes: (
        (images, mgnet.regions_around(boxes[:, :recipe.glimpses - 1], scale)), labels)
    data = lambda split, repeat: canvases_with_boxes(
        run, split, recipe.input_size, recipe.global_batch_size, repeat).map(regions)
    print(f"mgnet_oracle: {recipe.epochs} epochs, glimpses 2-{recipe.glimpses} on the target "
          f"digits (regions of {scale:g} of the side)")
    model = _fit(run, recipe, config, data("train", True), os.path.dirname(path))
    test = data(run.eval_split, False)
    if run.eval_steps:
        test = test.take(run.eval_steps)
    result = model.evaluate(test, return_dict=True, verbose=0)
    shape = (recipe.input_size, recipe.input_size, 3)
    row = {"model": "MGNet, glimpses on the target digits (oracle)",
           "input_size": recipe.input_size, "locations": None, "glimpses": recipe.glimpses,
           "accuracy": 100.0 * result["top1"],
           "gflops": profiling.count_flops_eq11(model, shape, glimpses=recipe.glimpses) / 1e9,
           "ms_per_image": profiling.measure_time(model, shape, **digits_report.TIMING,
                                                  glimpses=recipe.glimpses)[0],
           "params": model.count_params()}
    print(f"mgnet_oracle: top-1 {row['accuracy']:.2f} % with the glimpses on the target digits")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(row, handle, indent=1)
    return row


def pretrain_for(entry: Entry, stage: str) -> None:
    """Pretrains the backbone first when the stage starts from it (and no
    --init_checkpoint replaces it)."""
    recipe = entry.recipes.get(stage)
    if recipe is not None and recipe.init_from == PRETRAIN_STAGE:
        try:
            run = stages.prepare_data(runner.read_flags(entry, stage))
        except runner.FlagError as error:
            sys.exit(f"error: {error}")
        if not run.init_checkpoint:
            pretrain_backbone(run)


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
        pretrain_for(ENTRY, FLAGS.stage)
        runner.run(ENTRY)
        return
    plan = FLAGS.stages or list(ENTRY.recipes)
    unknown = [stage for stage in plan if stage not in ENTRY.recipes]
    if unknown:
        sys.exit(f"error: --stages: {', '.join(unknown)} not among {', '.join(ENTRY.recipes)}")
    entry = dataclasses.replace(ENTRY, tnet_stages=tuple(s for s in TNET_STAGES if s in plan))
    if not entry.tnet_stages:
        sys.exit(f"error: --stages: the report needs a TNet stage ({' or '.join(TNET_STAGES)})")
    started = time.time()
    for stage in entry.tnet_stages:
        pretrain_for(entry, stage)
    runner.run_stages(entry, plan)
    from experiments import digits_report
    try:
        config = stages.prepare_data(runner.read_flags(entry, "evaluate"))
    except runner.FlagError as error:
        sys.exit(f"error: {error}")
    mgnets = [s for s in plan if s in MGNET_STAGES]
    oracles = [oracle_row(config, stage) for stage in mgnets]
    digits_report.report(config, [s for s in plan if s in BASELINES], mgnets, oracles)
    print(f"megapixel MNIST finished in {runner.minutes(time.time() - started)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
