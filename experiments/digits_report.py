"""The report of the digits demo (`python -m experiments.digits`): TNet at
every budget, MGNet at every glimpse count and the baselines on the test
canvases, as a table, a plot and attention figures in the output folder.

Columns of `results.json` / `results.md` (one row per model and budget):
  model, input_size, locations, glimpses: what was run (TNet's budget,
    MGNet's glimpses; neither: a baseline);
  accuracy: top-1 test accuracy (%);
  gflops: multiplications per image by eq. (11), in billions;
  ms_per_image: inference time on this machine (batch 16, mean of 5 batches);
  full_res_percent: % of the canvas processed at its full (256 px) resolution
    (MGNet: the union of its glimpses 2..t whose region is at most
    glimpse_size canvas px wide);
  hit_rate_l<l>: % of attended level-l boxes that hold the whole digit box;
  hit_rate_l<l>_chance: the same for cells chosen uniformly at random
    (with several object boxes, e.g. Megapixel MNIST's target digits: boxes
    that hold one of them);
  location_entropy_l<l>: the mean entropy (nats) of the distributions that
    chose the level-l cells (deeper levels than 3 are appended as columns);
  plus top5, attended_only_top1, coverage_level<l> and params.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from experiments import stages
from experiments.run_config import RunConfig
from tnet_tf import evaluation, plots, profiling, tables
from tnet_tf.data import pipeline

ATTENTION_CANVASES = 16
TIMING = {"batch_size": 16, "num_batches": 5, "warmup_batches": 2}
COLUMNS = ("model", "input_size", "locations", "glimpses", "accuracy", "gflops", "ms_per_image",
           "full_res_percent", "hit_rate_l2", "hit_rate_l2_chance", "hit_rate_l3",
           "hit_rate_l3_chance")


def canvas_size(run: RunConfig) -> int:
    with open(os.path.join(run.data_dir, f"{run.eval_split}_report.json")) as handle:
        return int(json.load(handle)["spec"]["canvas_size"])


# Test batches hold at most this many pixels (and 100 canvases): 10 canvases of
# 1500 px, so that evaluating Megapixel MNIST stays within a few GB.
BATCH_PIXELS = 24_000_000


def test_dataset(run: RunConfig, size: int, batch_size: int = None, with_boxes: bool = True):
    batch_size = batch_size or max(1, min(100, BATCH_PIXELS // (size * size)))
    config = pipeline.input_config_for(
        run.entry.dataset, file_pattern=run.shard_pattern(run.eval_split), image_size=size,
        batch_size=batch_size, training=False, with_object_box=with_boxes,
        object_boxes=run.entry.object_boxes)
    dataset = pipeline.make_dataset(config)
    return dataset.take(run.eval_steps) if run.eval_steps else dataset


def full_res_percent(row: dict, size: int, config, canvas: int) -> float:
    """% of the canvas seen at its full resolution by TNet at input `size`
    (`row` from `evaluate_budgets`): the coverage of the first level whose
    glimpses sample at least one canvas pixel per glimpse pixel (deeper
    glimpses lie inside it)."""
    for level in range(2, 2 + len(row["locations"])):
        side = canvas * config.cell_fraction ** (level - 1)     # canvas pixels of a glimpse
        if size >= canvas and side <= config.base_resolution + 1e-6:
            return row.get(f"coverage_level{level}", 0.0)
    return 0.0


def tnet_rows(run: RunConfig, canvas: int):
    model, recipe, config = stages.restore(run, run.entry.tnet_stages[-1])
    rows = []
    for size, budgets in stages.by_size(stages.evaluation_plan(run, config, recipe)):
        results = evaluation.evaluate_budgets(model, test_dataset(run, size), budgets,
                                              progress=print)
        for result in results:
            kwargs = {"locations": result["locations"]}
            shape = (size, size, 3)
            row = {"model": "TNet", "input_size": size, "locations": result["locations"],
                   "accuracy": result["top1"],
                   "gflops": profiling.count_flops_eq11(model, shape, **kwargs) / 1e9,
                   "ms_per_image": profiling.measure_time(model, shape, **TIMING, **kwargs)[0]}
            row["full_res_percent"] = full_res_percent(result, size, config, canvas)
            row.update({k: v for k, v in result.items()
                        if k.startswith(("hit_rate", "location_entropy"))})
            row.update({k: result[k] for k in ("top5", "attended_only_top1")})
            row.update({k: v for k, v in result.items() if k.startswith("coverage")})
            row["params"] = model.count_params()
            rows.append(row)
    return rows, model, recipe


def baseline_row(run: RunConfig, stage: str, canvas: int) -> dict:
    model, recipe, _ = stages.restore(run, stage)
    size = recipe.input_size
    correct = count = 0
    for images, labels in test_dataset(run, size, with_boxes=False):
        predictions = np.argmax(model(images, training=False).numpy(), axis=-1)
        correct += int(np.sum(predictions == labels.numpy()))
        count += len(predictions)
    shape = (size, size, 3)
    print(f"{stage}: top-1 {100.0 * correct / count:.2f} % on {count} images")
    return {"model": f"baseline {size} px", "input_size": size, "locations": None,
            "accuracy": 100.0 * correct / count,
            "gflops": profiling.count_flops_eq11(model, shape) / 1e9,
            "ms_per_image": profiling.measure_time(model, shape, **TIMING)[0],
            "full_res_percent": 100.0 if size >= canvas else 0.0,
            "params": model.count_params()}


def mgnet_rows(run: RunConfig, stage: str, canvas: int):
    """MGNet's early exits t = 1..T on the test canvases (one pass)."""
    model, recipe, config = stages.restore(run, stage)
    size = recipe.input_size
    dataset = test_dataset(run, size)
    results = evaluation.evaluate_glimpses(model, dataset, recipe.glimpses, progress=print)
    full_res = (full_res_coverage(model, dataset, recipe.glimpses) if size >= canvas
                else [0.0] * recipe.glimpses)
    rows = []
    for result in results:
        kwargs, shape = {"glimpses": result["glimpses"]}, (size, size, 3)
        rows.append({"model": "MGNet", "input_size": size, "locations": None,
                     "glimpses": result["glimpses"], "accuracy": result["top1"],
                     "gflops": profiling.count_flops_eq11(model, shape, **kwargs) / 1e9,
                     "ms_per_image": profiling.measure_time(model, shape, **TIMING, **kwargs)[0],
                     "full_res_percent": full_res[result["glimpses"] - 1],
                     "top5": result["top5"], "coverage": result["coverage"],
                     "params": model.count_params()})
    return rows, model, recipe


def full_res_coverage(model, dataset, glimpses: int) -> list:
    """Per t: % of the image inside the union of MGNet's glimpses 2..t that
    sample at least one image pixel per glimpse pixel (a region at most
    glimpse_size px wide), averaged over the dataset."""
    sums, count = np.zeros(glimpses), 0
    for images, _, _ in dataset:
        outputs = model(images, glimpses=glimpses, training=False)
        sharp = outputs["regions"][:, :, 0] * images.shape[1] <= model.config.glimpse_size + 1e-6
        for t in range(2, glimpses + 1):
            # Coarser glimpses become empty boxes before the union.
            boxes = tf.where(sharp[:, 1:t, None], tf.concat(outputs["boxes"][1:t], axis=1), 0.0)
            sums[t - 1] += float(tf.reduce_sum(evaluation.coverage(boxes)))
        count += int(images.shape[0])
    return list(100.0 * sums / max(count, 1))


def attention_grid(run: RunConfig, model, recipe, path: str) -> str:
    """The attention of a TNet (at its training budget) or an MGNet (its T
    glimpses) on the first test canvases."""
    images, labels, _ = next(iter(test_dataset(run, recipe.input_size, ATTENTION_CANVASES)))
    outputs = model(images, training=False, **stages.call_kwargs(recipe))
    return plots.attention_grid(images.numpy(), outputs, labels.numpy(), path)


def report(run: RunConfig, baselines: Sequence[str], mgnets: Sequence[str] = (),
           extra_rows: Sequence[dict] = ()) -> list:
    """Evaluates TNet, `baselines` and `mgnets` (stage names) of the run's
    folder; writes the table (with `extra_rows` last), the JSON, the
    accuracy-vs-GFLOPs plot and the attention figures."""
    canvas = canvas_size(run)
    rows, model, recipe = tnet_rows(run, canvas)
    rows += [baseline_row(run, stage, canvas) for stage in baselines]
    figures = []
    for stage in mgnets:
        stage_rows, mgnet, mgnet_recipe = mgnet_rows(run, stage, canvas)
        rows += stage_rows
        figures.append(attention_grid(run, mgnet, mgnet_recipe,
                                      os.path.join(run.model_dir, f"attention_{stage}.png")))
    rows += list(extra_rows)
    folder = run.model_dir
    with open(os.path.join(folder, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    levels = sorted({k for row in rows for k in row
                     if k.startswith(("hit_rate", "location_entropy")) and k not in COLUMNS})
    tables.write_table([{k: row.get(k) for k in COLUMNS + tuple(levels)} for row in rows],
                           os.path.join(folder, "results"), kinds=("md",))
    plot = plots.accuracy_vs_flops([os.path.join(folder, "results.json")],
                                   os.path.join(folder, "accuracy_vs_gflops.png"),
                                   metric="accuracy")
    figure = attention_grid(run, model, recipe, os.path.join(folder, "attention.png"))
    with open(os.path.join(folder, "results.md")) as handle:
        print(handle.read())
    names = ", ".join(os.path.basename(f) for f in [figure] + figures)
    print(f"wrote {folder}/results.md, results.json, {os.path.basename(plot)} and {names}")
    return rows

