"""The stages every entry point runs: train (TNet or baseline), evaluate,
profile and visualize. Flags are read through `experiments.runner`."""
from __future__ import annotations

import glob
import json
import os
from typing import List, Tuple

import tensorflow as tf

import tnet_tf
from experiments import runner
from experiments.recipes import Recipe
from tnet_tf import budget as budget_lib, checkpoints, evaluation, plots, profiling, tables, training
from tnet_tf.data import pipeline

FLAGS = runner.FLAGS
# Batches that re-estimate batch-norm statistics per level after training
# (`training.recalibrate_batch_norm`; only models with `LevelBatchNormalization`).
RECALIBRATION_STEPS = 60


def seed_everything(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def make_smoke_data(folder: str) -> str:
    """A tiny cluttered-digits dataset (128 px canvases) for `--smoke` runs."""
    from data_prep import digits

    spec = digits.CanvasSpec(canvas_size=128, clutter=4)
    for split, count in (("train", 32), ("test", 16)):
        digits.write_split(folder, split, count, 2, seed=0, spec=spec)
    return folder


def make_strategy() -> tf.distribute.Strategy:
    if FLAGS.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if FLAGS.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if FLAGS.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=FLAGS.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def set_precision() -> None:
    if FLAGS.mixed_precision:
        gpu = bool(tf.config.list_logical_devices("GPU"))
        tf.keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")


def input_config(entry, split: str, image_size: int, batch_size: int, is_training: bool,
                 recipe: Recipe) -> pipeline.InputConfig:
    return pipeline.input_config_for(
        entry.dataset, file_pattern=runner.shard_pattern(split),
        image_size=image_size, batch_size=batch_size, training=is_training, seed=FLAGS.seed,
        crop_to_boxes=recipe.bbox_crops, augment=recipe.augment,
        cache_decoded=recipe.cache_decoded and is_training)


def count_examples(entry, split: str, recipe: Recipe) -> int:
    """Examples in a split, from its data_prep report or, failing that, by reading it."""
    report = os.path.join(FLAGS.data_dir, f"{split}_report.json")
    if os.path.exists(report):
        with open(report) as handle:
            values = json.load(handle)
        key = "boxes" if recipe.bbox_crops and "boxes" in values else "images"
        if values.get(key):
            return int(values[key])
    config = input_config(entry, split, 32, 1, False, recipe)
    return sum(1 for _ in pipeline.make_dataset(config))


def build_model(recipe: Recipe, config=None):
    """The stage's TNet or baseline and its config (built from the recipe when not given)."""
    config = config or runner.model_config(recipe)
    if recipe.model == "tnet":
        return tnet_tf.TNet(config), config
    return tnet_tf.Classifier(config, input_size=recipe.input_size), config


def compile_model(model, recipe: Recipe, total_steps: int) -> None:
    """Compiles for training; `--smoke` runs the steps eagerly (no graph to build)."""
    optimizer = training.make_optimizer(recipe.learning_rate, total_steps,
                                        schedule=recipe.lr_schedule)
    backbone_optimizer = None
    if recipe.backbone_learning_rate is not None:
        backbone_optimizer = training.make_optimizer(recipe.backbone_learning_rate, total_steps,
                                                     schedule=recipe.lr_schedule)
    if isinstance(model, tnet_tf.TNet):
        model.compile(optimizer, lambda_f=recipe.lambda_f, lambda_c=recipe.lambda_c,
                      lambda_r=recipe.lambda_r, max_feature_level=recipe.max_feature_level,
                      locations=recipe.locations, weight_decay=recipe.weight_decay,
                      backbone_optimizer=backbone_optimizer,
                      random_warmup_steps=recipe.random_warmup_steps,
                      contrastive_weight=recipe.contrastive_weight,
                      contrastive_margin=recipe.contrastive_margin, run_eagerly=FLAGS.smoke)
        return
    if recipe.weight_decay:
        model.add_loss(lambda: training.l2_penalty(training.decayed_variables(model),
                                                   recipe.weight_decay))
    top5 = min(5, model.config.num_classes)
    model.compile(optimizer,
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy("top1"),
                           tf.keras.metrics.SparseTopKCategoricalAccuracy(top5, "top5")],
                  contrastive_weight=recipe.contrastive_weight,
                  contrastive_margin=recipe.contrastive_margin, run_eagerly=FLAGS.smoke)


def train(entry, stage: str, recipe: Recipe, config=None) -> None:
    """Trains one stage into <model_dir>/<stage>; rerunning resumes it."""
    set_precision()
    strategy = make_strategy()
    examples = count_examples(entry, "train", recipe)
    steps = FLAGS.steps_per_epoch or max(1, examples // recipe.global_batch_size)
    if FLAGS.smoke:
        steps = min(steps, 2)
    with strategy.scope():
        model, config = build_model(recipe, config)
        compile_model(model, recipe, steps * recipe.epochs)
    runner.save_run_info(stage, recipe, config)
    folder = runner.stage_dir(stage)
    fresh = not os.path.isdir(os.path.join(folder, "backup"))
    source = FLAGS.init_checkpoint or (recipe.init_from and runner.final_checkpoint(
        recipe.init_from))
    if fresh and source:
        skip = ("classifier",) if _class_count_changed(source, config) else ()
        report = checkpoints.initialize_from_checkpoint(model, source, skip=skip)
        print(f"initialised from {source}: {json.dumps(report)}")

    skipped = pipeline.new_skip_counter()
    config_in = input_config(entry, "train", recipe.input_size, recipe.global_batch_size, True, recipe)
    data = tf.keras.utils.experimental.DatasetCreator(
        lambda context: pipeline.make_dataset(config_in, context, skipped))
    callbacks = checkpoints.training_callbacks(folder, save_every=FLAGS.save_every)
    callbacks.append(pipeline.SkippedRecordsLogger(skipped))
    stopped = (f" (early stop: of a {recipe.epochs}-epoch schedule)"
               if recipe.training_epochs < recipe.epochs else "")
    print(f"{stage}: {recipe.training_epochs} epochs{stopped} x {steps} steps of "
          f"{recipe.global_batch_size} images ({examples} training examples)")
    model.fit(data, epochs=recipe.training_epochs, steps_per_epoch=steps, callbacks=callbacks,
              verbose=2 if FLAGS.smoke else 1)
    used = training.recalibrate_batch_norm(model, pipeline.make_dataset(config_in),
                                           RECALIBRATION_STEPS)
    if used:
        print(f"{stage}: batch-norm statistics re-estimated on {used} training batches")
    model.save_weights(os.path.join(runner.final_checkpoint(stage), "weights"))
    print(f"{stage}: final weights in {runner.final_checkpoint(stage)}")
    if recipe.model == "baseline":
        evaluate_baseline(entry, model, stage, recipe)


def _class_count_changed(source: str, config) -> bool:
    run_file = os.path.join(os.path.dirname(source.rstrip("/")), "run.json")
    if not os.path.exists(run_file):
        return False
    with open(run_file) as handle:
        previous = json.load(handle).get("model_config", {})
    return previous.get("num_classes", config.num_classes) != config.num_classes


def _eval_dataset(entry, size: int, recipe: Recipe, batch_size: int = None):
    config = input_config(entry, FLAGS.eval_split, size, batch_size or recipe.global_batch_size, False,
                          recipe)
    dataset = pipeline.make_dataset(config)
    return dataset.take(FLAGS.eval_steps) if FLAGS.eval_steps else dataset


def evaluate_baseline(entry, model, stage: str, recipe: Recipe) -> None:
    results = model.evaluate(_eval_dataset(entry, recipe.input_size, recipe), return_dict=True,
                             verbose=2 if FLAGS.smoke else 1)
    shape = (recipe.input_size, recipe.input_size, 3)
    row = {"model": f"{model.config.backbone.name} {stage}", "input_size": recipe.input_size,
           "locations": None, "total_locations": None,
           "top1": 100.0 * results["top1"], "top5": 100.0 * results["top5"],
           "gflops": profiling.count_flops_eq11(model, shape) / 1e9,
           "params": model.count_params()}
    paths = tables.write_table([row], os.path.join(runner.stage_dir(stage), "results"))
    print(open(paths["md"]).read())


def _tuples(value):
    """JSON lists back to the recipe's (nested) tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def saved_run(folder: str):
    """The resolved recipe and model config a stage saved in `folder`/run.json."""
    with open(os.path.join(folder, "run.json")) as handle:
        info = json.load(handle)
    recipe = Recipe(**{k: _tuples(v) for k, v in info["recipe"].items()})
    return recipe, tnet_tf.TNetConfig.from_dict(info["model_config"])


def trained_input_sizes(model_dir: str, tnet_stages) -> List[int]:
    """The input sizes the TNet stages under `model_dir` were trained at, read
    from their run.json (stages never run are left out), never from flags."""
    return sorted({saved_run(os.path.join(model_dir, stage))[0].input_size
                   for stage in tnet_stages
                   if os.path.exists(os.path.join(model_dir, stage, "run.json"))})


def restore(stage: str):
    """The trained model of `stage` (rebuilt from its saved config, with its
    final weights), its recipe and its config."""
    recipe, config = saved_run(runner.stage_dir(stage))
    model = (tnet_tf.TNet(config) if recipe.model == "tnet"
             else tnet_tf.Classifier(config, input_size=recipe.input_size))
    model.load_weights(os.path.join(runner.final_checkpoint(stage), "weights")).expect_partial()
    return model, recipe, config


def _output_folder(tool_stage: str) -> str:
    folder = runner.stage_dir(tool_stage)
    os.makedirs(folder, exist_ok=True)
    return folder


def evaluation_plan(entry, config, recipe: Recipe) -> List[Tuple[int, Tuple[int, ...]]]:
    """(input size, budget) pairs: each budget at the smallest size a trained
    stage ran at that reaches it. The sizes come from the stages' saved
    run.json; the flags of this command only choose the budgets."""
    texts = runner.budget_texts()
    budgets = ([runner.parse_budget(t, "budgets") for t in texts] if texts
               else [tuple(b) for b in recipe.evaluation_budgets])
    sizes = sorted({*trained_input_sizes(FLAGS.model_dir, entry.tnet_stages),
                    recipe.input_size})
    plan = []
    for budget in budgets:
        levels = budget_lib.levels_needed(budget)
        fitting = [s for s in sizes if budget_lib.reachable_levels(
            s, config.base_resolution, config.cell_fraction) >= levels]
        if not fitting:
            raise runner.FlagError("budgets", f"{list(budget)} needs {levels} levels; no input "
                                   f"size of this dataset ({sizes}) reaches them")
        plan.append((fitting[0], budget))
    return plan


def evaluate(entry) -> None:
    """Every budget of the evaluated checkpoint: tables, attention CSV and the plot."""
    model, recipe, config = restore(FLAGS.checkpoint_stage)
    folder = _output_folder("evaluate")
    plan = evaluation_plan(entry, config, recipe)
    attention = (evaluation.AttentionCsv(os.path.join(folder, "attention.csv"))
                 if FLAGS.export_attention else None)
    rows = []
    for size in sorted({s for s, _ in plan}):
        budgets = [b for s, b in plan if s == size]
        for row in evaluation.evaluate_budgets(model, _eval_dataset(entry, size, recipe), budgets,
                                               attention_writer=attention, progress=print):
            shape = (size, size, 3)
            flops = profiling.count_flops_eq11(model, shape, locations=row["locations"])
            row = {"model": f"TNet {FLAGS.checkpoint_stage}", "input_size": size, **row,
                   "gflops": flops / 1e9, "params": model.count_params()}
            if FLAGS.profile:
                kwargs = {"locations": row["locations"]}
                row["ms_per_image"], row["ms_per_image_std"] = profiling.measure_time(
                    model, shape, 8, 5, 2, **kwargs)
                row["peak_memory_bytes"], row["memory_method"] = \
                    profiling.measure_peak_memory(model, shape, 8, **kwargs)
            rows.append(row)
    if attention is not None:
        attention.close()
    paths = tables.write_table(rows, os.path.join(folder, "results"))
    print(open(paths["md"]).read())
    results = sorted(glob.glob(os.path.join(FLAGS.model_dir, "*", "results.json")))
    plot = plots.accuracy_vs_flops(results, os.path.join(folder, "accuracy_vs_gflops.png"))
    print(f"wrote {', '.join(paths.values())} and {plot}")


def profile(entry) -> None:
    """Parameters, FLOPs, time and memory of the stage's model, plus a profiler trace."""
    recipe = runner.resolve_recipe(entry.recipes[FLAGS.checkpoint_stage])
    model, config = build_model(recipe)
    folder = runner.stage_dir("profile")
    os.makedirs(folder, exist_ok=True)
    shape = (recipe.input_size, recipe.input_size, 3)
    kwargs = {"locations": list(recipe.locations)} if recipe.model == "tnet" else {}
    row = profiling.ProfileRow(recipe.model, recipe.input_size,
                               recipe.locations if recipe.model == "tnet" else None)
    row.flops = profiling.count_flops_eq11(model, shape, **kwargs)
    row.flops_profiler = profiling.count_flops_profiler(model, shape, **kwargs)
    row.params = profiling.count_params(model)
    batches = 2 if FLAGS.smoke else 20
    row.ms_per_image, row.ms_per_image_std = profiling.measure_time(
        model, shape, 8, batches, 2, **kwargs)
    row.peak_memory_bytes, row.memory_method = profiling.measure_peak_memory(
        model, shape, 8, **kwargs)
    print(profiling.format_table([row]))
    with open(os.path.join(folder, "profile.json"), "w") as handle:
        json.dump([row.to_dict()], handle, indent=1)
    predict = tf.function(profiling.inference_call(model, **kwargs))
    images = tf.random.uniform([8, *shape], -1.0, 1.0)
    predict(images)
    trace_dir = os.path.join(folder, "trace")
    tf.profiler.experimental.start(trace_dir)
    for step in range(3):
        with tf.profiler.experimental.Trace("inference", step_num=step, _r=1):
            predict(images)
    tf.profiler.experimental.stop()
    print(f"profiler trace in {trace_dir} (tensorboard --logdir {trace_dir}, Profile tab)")


def visualize(entry) -> None:
    """Draws the attention policy on `--num_images` evaluation images."""
    model, recipe, _ = restore(FLAGS.checkpoint_stage)
    folder = _output_folder("visualize")
    written, remaining = [], FLAGS.num_images
    for images, labels in _eval_dataset(entry, recipe.input_size, recipe, batch_size=8):
        outputs = model(images, locations=list(recipe.locations), training=False)
        for index in range(min(remaining, int(images.shape[0]))):
            path = os.path.join(folder, f"attention_{len(written):03d}.png")
            plots.attention_figure(images[index].numpy(), outputs, index, path,
                                   label=int(labels[index]))
            written.append(path)
        remaining = FLAGS.num_images - len(written)
        if remaining <= 0:
            break
    print(f"wrote {len(written)} figures to {folder}")
