"""Learning benchmark: does the policy find the one grid cell that carries the label?

    python -m experiments.benchmark_learning                    # both variants
    python -m experiments.benchmark_learning --steps=300 --variants=per_feature

The task: 96 px images over a 3x3 grid of non-overlapping 32 px cells (base
resolution 32, so level 1 sees the image 3x subsampled and a level-2 glimpse
is an exact copy of its cell). One random cell per image is marked by a
red tint, visible at level 1, and holds a fine texture of +-1 pixel pairs
whose arrangement is the label (4 classes: horizontal pairs equal,
vertical pairs equal, horizontal pairs opposite, vertical pairs opposite).
The 3x subsampling of level 1 all but destroys the pair structure, so the
label needs the marked cell at full resolution. The other cells hold
weak noise. Training attends 3 of the 9 cells per image, the first quarter
of the steps at random (`random_warmup_steps`), so that the classifier
sees the marked cell before the top-k policy can settle; the backbone
uses batch normalisation, which learns the texture several times faster
than group normalisation (docs/design_notes.md has the seeds that fail
without these). Reported: the hit rate of the top-1 location on the marked cell
(chance 1/9), and top-1 accuracy with 0 and 1 locations, before and after
training, with per-feature regularization (lambda_c = lambda_r = 0.3) and
without it (eq. 1). On 2 CPU cores 400 steps take about 30 s per variant.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf

import tnet_tf
from tnet_tf import training

SIZE, CELL, GRID, CLASSES = 96, 32, 3, 4
TRAINING_LOCATIONS = 3
VARIANTS = {"per_feature": dict(lambda_c=0.3, lambda_r=0.3),
            "no_per_feature": dict(lambda_c=1.0, lambda_r=1.0)}


def make_task(count: int, seed: int):
    """Images [count, 96, 96, 3] in [-1, 1], labels [count], marked cells [count]."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.1, [count, SIZE, SIZE, 3]).astype(np.float32)
    labels = rng.integers(0, CLASSES, count)
    cells = rng.integers(0, GRID * GRID, count)
    for i in range(count):
        if labels[i] in (0, 2):            # pairs along x
            texture = np.repeat(rng.choice([-1.0, 1.0], [CELL, CELL // 2]), 2, axis=1)
            if labels[i] == 2:
                texture[:, 1::2] *= -1
        else:                              # pairs along y
            texture = np.repeat(rng.choice([-1.0, 1.0], [CELL // 2, CELL]), 2, axis=0)
            if labels[i] == 3:
                texture[1::2, :] *= -1
        y, x = divmod(int(cells[i]), GRID)
        patch = images[i, y * CELL:(y + 1) * CELL, x * CELL:(x + 1) * CELL]
        patch[...] = 0.6 * texture[..., None]
        patch[..., 0] += 0.4               # the red tint that level 1 can see
    return np.clip(images, -1.0, 1.0), labels.astype(np.int32), cells.astype(np.int32)


def tiny_tnet() -> tnet_tf.TNet:
    config = tnet_tf.get_preset(
        "tiny", num_classes=CLASSES, backbone={"norm": "batch"},
        base_resolution=CELL, input_size=SIZE, grid_size=GRID, cell_fraction=1.0 / GRID,
        locations=(TRAINING_LOCATIONS,))
    return tnet_tf.TNet(config)


def evaluate(model, images, labels, cells, batch: int = 200) -> dict:
    hits, correct = [], {0: [], 1: []}
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        one = model(x, locations=[1], training=False)
        hits.append(one["cells"].numpy()[:, 0] == cells[start:start + batch])
        correct[1].append(one["logits"].numpy().argmax(-1) == labels[start:start + batch])
        zero = model(x, locations=[0], training=False)["logits"].numpy()
        correct[0].append(zero.argmax(-1) == labels[start:start + batch])
    return {"hit_rate": float(np.mean(np.concatenate(hits))),
            "accuracy_0_locations": float(np.mean(np.concatenate(correct[0]))),
            "accuracy_1_location": float(np.mean(np.concatenate(correct[1])))}


def run(variant: str = "per_feature", steps: int = 400, batch: int = 32,
        learning_rate: float = 3e-3, lambda_f: float = 0.1, seed: int = 0,
        test_count: int = 400, figures: str = None) -> dict:
    """Trains one variant; returns its numbers before and after training."""
    tf.keras.utils.set_random_seed(seed)
    train = make_task(steps * batch // 2, seed)          # each image seen twice
    test = make_task(test_count, seed + 1000)
    model = tiny_tnet()
    model(test[0][:1], locations=[1])
    before = evaluate(model, *test)
    model.compile(training.make_optimizer(learning_rate, steps), lambda_f=lambda_f,
                  random_warmup_steps=steps // 4, **VARIANTS[variant])
    dataset = (tf.data.Dataset.from_tensor_slices(train[:2]).shuffle(4096, seed=seed)
               .repeat().batch(batch, drop_remainder=True))
    started = time.time()
    history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.time() - started
    after = evaluate(model, *test)
    if figures:
        draw_figures(model, test, variant, figures)
    return {"variant": variant, "steps": steps, "batch": batch, "seconds": round(seconds, 1),
            "before": before, "after": after,
            "final_baseline": float(model.baseline.numpy()),
            "final_train_reward": float(history.history["reward"][-1])}


def draw_figures(model, test, variant: str, folder: str) -> None:
    """Attention figures of the trained model on 3 test images, and its
    accuracy against GFLOPs for 0-3 locations, into `folder`."""
    from tnet_tf import evaluation, plots, profiling

    os.makedirs(folder, exist_ok=True)
    images, labels, _ = test
    outputs = model(images[:3], locations=[2], training=False)
    for index in range(3):
        plots.attention_figure(images[index], outputs, index,
                               os.path.join(folder, f"attention_{variant}_{index}.png"),
                               label=int(labels[index]))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(100)
    rows = evaluation.evaluate_budgets(model, dataset, [(0,), (1,), (2,), (3,)])
    for row in rows:
        row["model"] = f"TNet ({variant})"
        row["gflops"] = profiling.count_flops_eq11(
            model, (SIZE, SIZE, 3), locations=row["locations"]) / 1e9
    results = os.path.join(folder, f"results_{variant}.json")
    with open(results, "w") as handle:
        json.dump(rows, handle)
    plots.accuracy_vs_flops([results], os.path.join(folder, f"accuracy_vs_gflops_{variant}.png"))


def main(argv):
    del argv
    for variant in FLAGS.variants:
        print(json.dumps(run(variant, FLAGS.steps, FLAGS.batch, FLAGS.learning_rate,
                             FLAGS.lambda_f, FLAGS.seed, figures=FLAGS.figures)), flush=True)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("variants", list(VARIANTS), "per_feature and/or no_per_feature")
    flags.DEFINE_integer("steps", 400, "training steps")
    flags.DEFINE_integer("batch", 32, "batch size")
    flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate (dropped x0.1 at 80 %)")
    flags.DEFINE_float("lambda_f", 0.1, "REINFORCE weight")
    flags.DEFINE_integer("seed", 0, "random seed")
    flags.DEFINE_string("figures", None, "Also write attention figures and the accuracy vs "
                        "GFLOPs plot of each trained variant to this folder.")
    FLAGS = flags.FLAGS
    app.run(main)
