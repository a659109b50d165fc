"""The stages every entry point runs: train (TNet or baseline), evaluate,
profile and visualize, each a function of one `run_config.RunConfig`.

`run(config)` prepares the data, validates and saves the config and calls
the stage; a test builds the config with `run_config.resolve` and calls it
in-process."""
from __future__ import annotations

import glob
import importlib
import json
import os
import time
from typing import List, Optional, Tuple

import tensorflow as tf

import tnet_tf
from experiments import class_names, run_config
from experiments.recipes import Recipe
from experiments.run_config import FlagError, RunConfig
from tnet_tf import (budget as budget_lib, checkpoints, evaluation, plots, profiling, release,
                     tables, training)
from tnet_tf.data import pipeline

# Batches that re-estimate batch-norm statistics per level after training
# (`training.recalibrate_batch_norm`; only models with `LevelBatchNormalization`).
RECALIBRATION_STEPS = 60
# Seconds the non-chief workers of a multi-worker run wait for the chief to
# write a generated dataset (the digits demo's, `--smoke` data).
DATA_WAIT_S = 1800


def run(config: RunConfig):
    """Prepares the data, validates the run, saves it and runs its stage;
    returns the stage's result. Raises FlagError on a bad setting."""
    # A multi-worker or TPU strategy must exist before any TensorFlow op runs.
    strategy = make_strategy(config) if config.is_training else None
    config = run_config.validate(prepare_data(config))
    run_config.save(config)
    tf.keras.utils.set_random_seed(config.seed)
    if config.is_training:
        class_names.save(config)
        return train(config, strategy)
    return STAGES[config.stage](config)


def prepare_data(config: RunConfig) -> RunConfig:
    """The run with its data in place: `smoke` runs write a tiny dataset into
    the run folder, datasets the entry point can generate are written when
    missing."""
    if not config.model_dir:
        return config
    if config.smoke and not config.data_dir:
        folder = os.path.join(config.model_dir, "smoke_data")
        generate_once(folder, config.entry.smoke_data or make_smoke_data, "smoke")
        return config.replace(data_dir=folder, eval_split="test")
    if config.entry.generate_data is not None:
        config = config.replace(data_dir=config.data_dir or
                                os.path.join(config.model_dir, "data"))
        generate_once(config.data_dir, config.entry.generate_data, config.entry.dataset,
                      needed=not glob.glob(config.shard_pattern("train")))
    return config


def generate_once(folder: str, write, name: str, needed: bool = True,
                  wait_s: float = DATA_WAIT_S) -> None:
    """Writes a generated dataset into `folder` on the chief (when `needed`)
    and marks it complete; the other workers of a multi-worker run wait for
    the mark instead of writing the same files."""
    mark = os.path.join(folder, "COMPLETE")
    if run_config.is_chief():
        if needed:
            print(f"generating the {name} dataset in {folder}")
            write(folder)
        os.makedirs(folder, exist_ok=True)
        open(mark, "w").close()
        return
    deadline = time.time() + wait_s
    while not os.path.exists(mark):
        if time.time() > deadline:
            raise FlagError("data_dir", f"the chief did not finish the {name} dataset in "
                            f"{folder} within {wait_s:.0f} s")
        time.sleep(2)


def make_smoke_data(folder: str) -> None:
    """A tiny cluttered-digits dataset (128 px canvases) for `--smoke` runs."""
    from data_prep import digits

    spec = digits.CanvasSpec(canvas_size=128, clutter=4)
    for split, count in (("train", 32), ("test", 16)):
        digits.write_split(folder, split, count, 2, seed=0, spec=spec)


def make_strategy(config: RunConfig) -> tf.distribute.Strategy:
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, OSError, tf.errors.OpError) as error:
            raise FlagError("tpu", f"--strategy=tpu cannot reach the TPU "
                            f"{config.tpu or '(none named)'}: {error}") from error
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def set_precision(config: RunConfig) -> None:
    if config.mixed_precision:
        tf.keras.mixed_precision.set_global_policy(config.mixed_precision)


def input_config(config: RunConfig, split: str, image_size: int, batch_size: int,
                 is_training: bool, recipe: Recipe) -> pipeline.InputConfig:
    return pipeline.input_config_for(
        config.entry.dataset, file_pattern=config.shard_pattern(split),
        image_size=image_size, batch_size=batch_size, training=is_training, seed=config.seed,
        crop_to_boxes=recipe.bbox_crops, augment=recipe.augment,
        cache=recipe.cache if is_training else None)


def count_examples(config: RunConfig, split: str, recipe: Recipe) -> int:
    """Examples in a split, from its data_prep report or, failing that, by reading it."""
    report = os.path.join(config.data_dir, f"{split}_report.json")
    if os.path.exists(report):
        with open(report) as handle:
            values = json.load(handle)
        key = "boxes" if recipe.bbox_crops and "boxes" in values else "images"
        if values.get(key):
            return int(values[key])
    return sum(1 for _ in pipeline.make_dataset(input_config(config, split, 32, 1, False, recipe)))


def build_model(recipe: Recipe, config):
    """The stage's TNet, MGNet or baseline for model config `config`."""
    if recipe.model == "tnet":
        return tnet_tf.TNet(config)
    if recipe.model == "mgnet":
        return tnet_tf.MGNet(config)
    return tnet_tf.Classifier(config, input_size=recipe.input_size)


def compile_model(model, recipe: Recipe, total_steps: int, run_eagerly: bool = False,
                  jit_compile: bool = False) -> None:
    """Compiles for training (`--smoke` runs the steps eagerly: no graph to
    build, unless they are XLA-compiled)."""
    run_eagerly = run_eagerly and not jit_compile
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
                      selection=recipe.selection,
                      exploration_epsilon=recipe.exploration_epsilon,
                      exploration_steps=recipe.exploration_steps,
                      entropy_weight=recipe.entropy_weight, reward=recipe.reward,
                      contrastive_weight=recipe.contrastive_weight,
                      contrastive_margin=recipe.contrastive_margin, run_eagerly=run_eagerly,
                      jit_compile=jit_compile)
        return
    if isinstance(model, tnet_tf.MGNet):
        model.compile(optimizer, glimpses=recipe.glimpses, weight_decay=recipe.weight_decay,
                      run_eagerly=run_eagerly, jit_compile=jit_compile)
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
                  contrastive_margin=recipe.contrastive_margin, run_eagerly=run_eagerly,
                  jit_compile=jit_compile)


def train(config: RunConfig, strategy: Optional[tf.distribute.Strategy] = None) -> dict:
    """Trains one stage into <model_dir>/<stage> under `strategy` (default:
    the one `config.strategy` names); rerunning resumes it.
    Returns {"checkpoint": final weights, "rows": a baseline's test results}."""
    recipe, stage, folder = config.recipe, config.stage, config.stage_dir()
    set_precision(config)
    strategy = strategy or make_strategy(config)
    examples = count_examples(config, "train", recipe)
    steps = config.steps_per_epoch or max(1, examples // recipe.global_batch_size)
    if config.smoke:
        steps = min(steps, 2)
    with strategy.scope():
        model = build_model(recipe, config.model_config)
        compile_model(model, recipe, steps * recipe.epochs, run_eagerly=config.smoke,
                      jit_compile=config.jit_compile)
    source = run_config.init_source(config)
    if source and not os.path.isdir(os.path.join(folder, "backup")):
        skip = ("classifier",) if _class_count_changed(source, config.model_config) else ()
        report = checkpoints.initialize_from_checkpoint(model, source, skip=skip)
        print(f"initialised from {source}: {json.dumps(report)}")

    skipped = pipeline.new_skip_counter()
    train_input = input_config(config, "train", recipe.input_size, recipe.global_batch_size,
                               True, recipe)
    epoch, step = checkpoints.resume_position(folder, steps)
    epochs = pipeline.Epochs(steps, recipe.training_epochs, epoch, step)
    if (epoch, step) != (0, 0):
        print(f"{stage}: resuming from {folder}/backup at epoch {epoch + 1}, step {step + 1}; "
              f"the input skips the {step} batches of that epoch already trained")
    data = tf.keras.utils.experimental.DatasetCreator(
        lambda context: pipeline.make_dataset(train_input, context, skipped, epochs))
    callbacks = checkpoints.training_callbacks(folder, save_every=config.save_every)
    callbacks.append(pipeline.SkippedRecordsLogger(skipped))
    stopped = (f" (early stop: of a {recipe.epochs}-epoch schedule)"
               if recipe.training_epochs < recipe.epochs else "")
    print(f"{stage}: {recipe.training_epochs} epochs{stopped} x {steps} steps of "
          f"{recipe.global_batch_size} images ({examples} training examples)")
    model.fit(data, epochs=recipe.training_epochs, steps_per_epoch=steps, callbacks=callbacks,
              verbose=2 if config.smoke else 1)
    used = training.recalibrate_batch_norm(model, pipeline.make_dataset(train_input),
                                           RECALIBRATION_STEPS)
    if used:
        print(f"{stage}: batch-norm statistics re-estimated on {used} training batches")
    save_final_weights(model, config.final_checkpoint(), strategy)
    print(f"{stage}: final weights in {config.final_checkpoint()}")
    rows = evaluate_baseline(config, model, strategy) if recipe.model == "baseline" else None
    return {"checkpoint": config.final_checkpoint(), "rows": rows}


def save_final_weights(model, folder: str, strategy: tf.distribute.Strategy) -> None:
    """Saves `model` to `folder`/weights on the chief. Every worker of a
    multi-worker run saves (as the Keras guide asks), the others into a
    temporary folder that is then removed."""
    if strategy.extended.should_checkpoint:
        model.save_weights(os.path.join(folder, "weights"))
        return
    task = strategy.cluster_resolver.task_id
    temporary = f"{folder}_workertemp_{task}"
    model.save_weights(os.path.join(temporary, "weights"))
    tf.io.gfile.rmtree(temporary)
    # Keras leaves this worker's backup folder behind when no backup was due.
    backup = os.path.join(os.path.dirname(folder), "backup", f"workertemp_{task}")
    if tf.io.gfile.isdir(backup) and not tf.io.gfile.listdir(backup):
        tf.io.gfile.rmtree(backup)


def _class_count_changed(source: str, config) -> bool:
    run_file = os.path.join(os.path.dirname(source.rstrip("/")), "run.json")
    if not os.path.exists(run_file):
        return False
    with open(run_file) as handle:
        previous = json.load(handle).get("model_config", {})
    return previous.get("num_classes", config.num_classes) != config.num_classes


def eval_dataset(config: RunConfig, size: int, recipe: Recipe, batch_size: int = None):
    """The evaluated split at input `size`, at most `eval_steps` batches."""
    dataset = pipeline.make_dataset(input_config(
        config, config.eval_split, size, batch_size or recipe.global_batch_size, False, recipe))
    return dataset.take(config.eval_steps) if config.eval_steps else dataset


def evaluate_baseline(config: RunConfig, model,
                      strategy: Optional[tf.distribute.Strategy] = None) -> List[dict]:
    """A trained baseline's test row; written to the stage's results on the
    chief only (every worker of a multi-worker run evaluates)."""
    row = baseline_row(config, model, config.stage)
    if strategy is not None and not strategy.extended.should_checkpoint:
        return [row]
    paths = tables.write_table([row], os.path.join(config.stage_dir(), "results"))
    print(open(paths["md"]).read())
    return [row]


def baseline_row(config: RunConfig, model, label: str) -> dict:
    """A baseline's accuracy, GFLOPs and parameters on the evaluated split."""
    recipe = config.recipe
    if model.compiled_loss is None:   # restored, not trained in this run
        top5 = min(5, model.config.num_classes)
        model.compile(metrics=[tf.keras.metrics.SparseCategoricalAccuracy("top1"),
                               tf.keras.metrics.SparseTopKCategoricalAccuracy(top5, "top5")])
    results = model.evaluate(eval_dataset(config, recipe.input_size, recipe), return_dict=True,
                             verbose=2 if config.smoke else 1)
    shape = (recipe.input_size, recipe.input_size, 3)
    return {"model": f"{model.config.backbone.name} {label}",
            "input_size": recipe.input_size, "locations": None, "total_locations": None,
            "top1": 100.0 * results["top1"], "top5": 100.0 * results["top5"],
            "gflops": profiling.count_flops_eq11(model, shape) / 1e9,
            "params": model.count_params()}


def trained_input_sizes(model_dir: str, tnet_stages) -> List[int]:
    """The input sizes the TNet stages under `model_dir` were trained at, read
    from their run.json (stages never run are left out), never from flags."""
    return sorted({run_config.saved_run(os.path.join(model_dir, stage))[0].input_size
                   for stage in tnet_stages
                   if os.path.exists(os.path.join(model_dir, stage, "run.json"))})


def restore(config: RunConfig, stage: Optional[str] = None):
    """The trained model of `stage` (default: the checkpoint stage), rebuilt
    from its saved config with its final weights, its recipe and its config;
    with --release_checkpoint, the checkpoint stage's model with those weights."""
    if config.release_checkpoint:
        return restore_release(config)
    return restore_stage(config.stage_dir(stage or config.checkpoint_stage))


def restore_release(config: RunConfig):
    """(model, recipe, model config): the checkpoint stage's TNet or baseline
    (`config.model_config`, which `run_config.resolve` gave the release's
    geometry) with the weights of the authors' release checkpoint."""
    recipe = config.recipe
    fields = {**config.model_config.to_dict(), "input_size": recipe.input_size}
    model = release.load_model(config.release_checkpoint, recipe.preset, model=recipe.model,
                               **fields)
    metadata = ", ".join(f"{key} {value}" for key, value in model.release_metadata.items())
    print(f"{config.checkpoint_stage}: the release weights of {config.release_checkpoint} "
          f"({metadata})")
    return model, recipe, model.config


def restore_tnet(model_dir: Optional[str] = None, release_checkpoint: Optional[str] = None,
                 dataset: Optional[str] = None, backbone: Optional[str] = None):
    """(model, recipe, model config, class names) of the trained TNet stage in
    `model_dir`, or of the authors' published TNet of `dataset` read from
    `release_checkpoint` (`backbone`: CUB / NABirds TNet-B1..B4); FlagError
    naming the bad flag (predict and export serve either)."""
    if release_checkpoint is None:
        if not model_dir:
            raise FlagError("model_dir", "is required (or --release_checkpoint and --dataset)")
        model, recipe, config = restore_stage(model_dir, model="tnet")
        return model, recipe, config, class_names.load(model_dir, config.num_classes)
    if dataset not in run_config.RELEASE_DATASETS:
        raise FlagError("dataset", f"{dataset!r}: --release_checkpoint needs the dataset of the "
                        f"published TNet, one of {', '.join(run_config.RELEASE_DATASETS)}")
    entry = importlib.import_module(f"experiments.{dataset}").ENTRY
    overrides = {"backbone": {"name": run_config.backbone_name(backbone)}} if backbone else {}
    run = run_config.check_release(run_config.resolve(
        entry, "evaluate", "", release_checkpoint=release_checkpoint, model_overrides=overrides))
    model, recipe, config = restore_release(run)
    return model, recipe, config, class_names.for_dataset(dataset, config.num_classes)


def label(config: RunConfig) -> str:
    """The evaluated stage in result tables."""
    return config.checkpoint_stage + (" (release weights)" if config.release_checkpoint else "")


def restore_stage(folder: str, model: Optional[str] = None):
    """(model, recipe, model config) of the trained stage in `folder` (its
    run.json and final weights); FlagError naming --model_dir otherwise, or
    when `model` ("tnet" or "baseline") names another kind of stage."""
    weights = os.path.join(folder, "final", "weights")
    if not os.path.exists(os.path.join(folder, "run.json")):
        raise FlagError("model_dir", f"{folder} holds no run.json: not a stage folder "
                        f"(RUN/STAGE, e.g. runs/fmow/finetune_896)")
    if not tf.io.gfile.glob(weights + ".index"):
        raise FlagError("model_dir", f"{folder} has no final weights ({weights}); is the "
                        f"stage trained?")
    recipe, model_config = run_config.saved_run(folder)
    if model is not None and recipe.model != model:
        raise FlagError("model_dir", f"{folder} is a {recipe.model} stage; a {model} stage "
                        f"is needed")
    restored = build_model(recipe, model_config)
    restored.load_weights(weights).expect_partial()
    return restored, recipe, model_config


def evaluation_plan(config: RunConfig, model_config,
                    recipe: Recipe) -> List[Tuple[int, Tuple[int, ...]]]:
    """(input size, budget) pairs: each budget at the smallest size a trained
    stage ran at that reaches it. The sizes come from the stages' saved
    run.json; the run only chooses the budgets."""
    budgets = config.budgets or [tuple(b) for b in recipe.evaluation_budgets]
    if config.release_checkpoint:   # the released TNet went through every TNet stage
        trained = [config.entry.recipes[stage].input_size for stage in config.entry.tnet_stages]
    else:
        trained = trained_input_sizes(config.model_dir, config.entry.tnet_stages)
    sizes = sorted({*trained, recipe.input_size})
    plan = []
    for locations in budgets:
        levels = budget_lib.levels_needed(locations)
        fitting = [s for s in sizes if budget_lib.reachable_levels(
            s, model_config.base_resolution, model_config.cell_fraction) >= levels]
        if not fitting:
            raise FlagError("budgets", f"{list(locations)} needs {levels} levels; no input "
                            f"size of this dataset ({sizes}) reaches them")
        plan.append((fitting[0], locations))
    return plan


def by_size(plan):
    """(size, budgets at that size) of an evaluation plan, by increasing size."""
    for size in sorted({s for s, _ in plan}):
        yield size, [b for s, b in plan if s == size]


def call_kwargs(recipe: Recipe) -> dict:
    """The budget a stage's model is called with: TNet's locations, MGNet's glimpses."""
    if recipe.model == "tnet":
        return {"locations": list(recipe.locations)}
    return {"glimpses": recipe.glimpses} if recipe.model == "mgnet" else {}


def evaluate_mgnet(config: RunConfig, model, recipe: Recipe) -> List[dict]:
    """MGNet's rows: every early exit t <= T from one pass over the split,
    with the GFLOPs (and, with --profile, ms/image) of stopping at t."""
    shape = (recipe.input_size, recipe.input_size, 3)
    rows = []
    for row in evaluation.evaluate_glimpses(model, eval_dataset(config, recipe.input_size,
                                                                recipe),
                                            recipe.glimpses, progress=print):
        kwargs = {"glimpses": row["glimpses"]}
        row = {"model": f"MGNet {label(config)}", "input_size": recipe.input_size,
               **row, "gflops": profiling.count_flops_eq11(model, shape, **kwargs) / 1e9,
               "params": model.count_params()}
        if config.profile:
            row["ms_per_image"], row["ms_per_image_std"] = profiling.measure_time(
                model, shape, 8, 5, 2, **kwargs)
        rows.append(row)
    return rows


def evaluate(config: RunConfig) -> List[dict]:
    """Every budget of the evaluated checkpoint (MGNet: every number of
    glimpses): tables, attention CSV and the plot; returns the table's rows."""
    model, recipe, model_config = restore(config)
    folder = config.stage_dir()
    if recipe.model == "mgnet":
        return _write_results(config, evaluate_mgnet(config, model, recipe))
    if recipe.model == "baseline":
        return _write_results(config, [baseline_row(config, model, label(config))])
    attention = (evaluation.AttentionCsv(os.path.join(folder, "attention.csv"))
                 if config.export_attention else None)
    rows = []
    for size, budgets in by_size(evaluation_plan(config, model_config, recipe)):
        for row in evaluation.evaluate_budgets(model, eval_dataset(config, size, recipe),
                                               budgets, attention_writer=attention,
                                               progress=print):
            shape = (size, size, 3)
            flops = profiling.count_flops_eq11(model, shape, locations=row["locations"])
            row = {"model": f"TNet {label(config)}", "input_size": size, **row,
                   "gflops": flops / 1e9, "params": model.count_params()}
            if config.profile:
                kwargs = {"locations": row["locations"]}
                row["ms_per_image"], row["ms_per_image_std"] = profiling.measure_time(
                    model, shape, 8, 5, 2, **kwargs)
                row["peak_memory_bytes"], row["memory_method"] = \
                    profiling.measure_peak_memory(model, shape, 8, **kwargs)
            rows.append(row)
    if attention is not None:
        attention.close()
    return _write_results(config, rows)


def _write_results(config: RunConfig, rows: List[dict]) -> List[dict]:
    folder = config.stage_dir()
    paths = tables.write_table(rows, os.path.join(folder, "results"))
    print(open(paths["md"]).read())
    results = sorted(glob.glob(os.path.join(config.model_dir, "*", "results.json")))
    plot = plots.accuracy_vs_flops(results, os.path.join(folder, "accuracy_vs_gflops.png"))
    print(f"wrote {', '.join(paths.values())} and {plot}")
    return rows


def profile(config: RunConfig) -> dict:
    """Parameters, FLOPs, time and memory of the checkpoint stage's model (as
    its recipe builds it), plus a profiler trace; returns the profile row."""
    recipe, folder = config.recipe, config.stage_dir()
    model = (restore_release(config)[0] if config.release_checkpoint
             else build_model(recipe, config.model_config))
    shape = (recipe.input_size, recipe.input_size, 3)
    kwargs = call_kwargs(recipe)
    row = profiling.ProfileRow(recipe.model, recipe.input_size,
                               recipe.locations if recipe.model == "tnet" else None,
                               recipe.glimpses if recipe.model == "mgnet" else None)
    row.flops = profiling.count_flops_eq11(model, shape, **kwargs)
    row.flops_profiler = profiling.count_flops_profiler(model, shape, **kwargs)
    row.params = profiling.count_params(model)
    batches = 2 if config.smoke else 20
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
    return row.to_dict()


def visualize(config: RunConfig) -> List[str]:
    """Draws the attention policy on `num_images` evaluation images; returns
    the figures' paths."""
    model, recipe, _ = restore(config)
    folder = config.stage_dir()
    written = []
    for images, labels in eval_dataset(config, recipe.input_size, recipe, batch_size=8):
        outputs = model(images, training=False, **call_kwargs(recipe))
        for index in range(min(config.num_images - len(written), int(images.shape[0]))):
            path = os.path.join(folder, f"attention_{len(written):03d}.png")
            plots.attention_figure(images[index].numpy(), outputs, index, path,
                                   label=int(labels[index]))
            written.append(path)
        if len(written) >= config.num_images:
            break
    print(f"wrote {len(written)} figures to {folder}")
    return written


STAGES = {"evaluate": evaluate, "profile": profile, "visualize": visualize}
