"""Evaluation of a TNet over location budgets: accuracy, accuracy from the
attended locations only, coverage per level, policy hit rates against
object boxes, and the attended boxes.

`evaluate_budgets` runs a dataset of (images, labels) batches once per
budget and returns one row per budget; `tnet_tf.tables.write_table` saves
rows as Markdown, CSV and JSON in the style of the paper's Tables 1-2.
"""
from __future__ import annotations

import csv
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tnet_tf import budget as budget_lib, geometry
from tnet_tf.losses import location_entropy

COVERAGE_RESOLUTION = 256   # coverage is measured on this raster (exact for 1/256 multiples)


def attended_only_logits(model, outputs):
    """Logits from the features of levels >= 2 only, without the level-1
    context (paper section 5.3); weights renormalised over those features."""
    attended = tf.cast(outputs["feature_levels"] > 1, tf.float32)[None, :]
    weights = outputs["feature_weights"] * attended
    weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-12)
    pooled = tf.reduce_sum(tf.cast(weights[..., None], outputs["features"].dtype) *
                           outputs["features"], axis=1)
    return model.classifier(pooled, training=False)


def coverage(boxes, resolution: int = COVERAGE_RESOLUTION):
    """Fraction of the image inside the union of each image's boxes.

    boxes: [B, P, 4] edge-normalised; returns [B]. The union is rasterised
    on a `resolution` x `resolution` grid of pixel centres.
    """
    centres = (tf.range(resolution, dtype=tf.float32) + 0.5) / resolution
    y1, x1, y2, x2 = (boxes[..., i, None] for i in range(4))
    rows = (centres >= y1) & (centres < y2)                      # [B, P, R]
    cols = (centres >= x1) & (centres < x2)
    inside = rows[..., :, None] & cols[..., None, :]             # [B, P, R, R]
    return tf.reduce_mean(tf.cast(tf.reduce_any(inside, axis=1), tf.float32), axis=[1, 2])


def contains(boxes, object_boxes, tolerance: float = 1e-6):
    """Whether each box holds the whole object box: boxes [B, ..., 4] and
    object_boxes [B, 4] (both edge-normalised y1, x1, y2, x2) -> bool [B, ...].
    With object_boxes [B, M, 4]: whether each box holds at least one of the M
    whole (padding `pipeline.NO_BOX` is never held)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    objects = tf.cast(object_boxes, tf.float32)
    if objects.shape.rank == 2:
        objects = objects[:, None]
    inner = tf.reshape(objects, tf.concat([tf.shape(objects)[:1], [1] * (boxes.shape.rank - 2),
                                           tf.shape(objects)[1:]], 0))   # [B, 1.., M, 4]
    outer = boxes[..., None, :]
    starts = tf.reduce_all(outer[..., :2] <= inner[..., :2] + tolerance, axis=-1)
    ends = tf.reduce_all(outer[..., 2:] >= inner[..., 2:] - tolerance, axis=-1)
    return tf.reduce_any(starts & ends, axis=-1)


def hit_rates(outputs, object_boxes, cell_boxes):
    """Per level l >= 2 that attended cells: the fraction of each image's
    attended boxes holding the whole object box (object_boxes [B, 4]; or one
    of several, [B, M, 4]), and its chance value (the
    expected fraction if every glimpse of level l - 1 chose its cells
    uniformly at random). Returns {level: (hits [B], chance [B])}.

    cell_boxes: [n * n, 4], the grid cells of a glimpse (`TNet.cell_boxes`).
    """
    rates = {}
    for level in range(2, len(outputs["boxes"]) + 1):
        attended = outputs["boxes"][level - 1]                          # [B, P, 4]
        parents = outputs["boxes"][level - 2]                           # [B, Q, 4]
        every_cell = geometry.compose_boxes(parents[:, :, None, :], cell_boxes)  # [B, Q, K, 4]
        hits = tf.cast(contains(attended, object_boxes), tf.float32)
        chance = tf.cast(contains(every_cell, object_boxes), tf.float32)
        rates[level] = (tf.reduce_mean(hits, axis=1), tf.reduce_mean(chance, axis=[1, 2]))
    return rates


class _Accumulator:
    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.count = 0

    def add(self, name, values):
        self.sums[name] = self.sums.get(name, 0.0) + float(tf.reduce_sum(values))

    def mean(self, name):
        return self.sums[name] / max(self.count, 1)


def _top_k_correct(logits, labels, k):
    k = min(k, logits.shape[-1])
    return tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, k), tf.float32)


def evaluate_budgets(model, dataset: Iterable, budgets: Sequence[Sequence[int]],
                     attention_writer: Optional[Callable] = None,
                     progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Evaluates `model` on `dataset` at every location budget.

    `dataset` yields (images, labels) or (images, labels, object_boxes)
    batches (`InputConfig.with_object_box`).
    Returns one dict per budget: locations, total_locations, images, top1,
    top5 (in %), attended_only_top1 / attended_only_top5 (None without
    attended locations), coverage_level<l> (% of the image seen at level l)
    and, with object boxes, hit_rate_l<l> / hit_rate_l<l>_chance (% of the
    attended level-l boxes holding the whole object box, and the value for
    uniformly random cells; see `hit_rates`) and location_entropy_l<l> (the
    mean entropy in nats of the distributions that choose the level-l cells;
    ln(n * n) is uniform).
    `attention_writer(budget, batch_start, labels, outputs)` receives every
    batch's outputs (e.g. an `AttentionCsv`).
    """
    predict = tf.function(lambda images, budget: model(images, locations=list(budget),
                                                       training=False), reduce_retracing=True)
    rows = []
    for budget in budgets:
        budget = tuple(int(k) for k in budget)
        totals = _Accumulator()
        for batch in dataset:
            images, labels = batch[:2]
            outputs = predict(images, budget)
            totals.add("top1", _top_k_correct(outputs["logits"], labels, 1))
            totals.add("top5", _top_k_correct(outputs["logits"], labels, 5))
            if outputs["cells"].shape[1]:
                only = attended_only_logits(model, outputs)
                totals.add("attended_only_top1", _top_k_correct(only, labels, 1))
                totals.add("attended_only_top5", _top_k_correct(only, labels, 5))
            for level, boxes in enumerate(outputs["boxes"], start=1):
                totals.add(f"coverage_level{level}", coverage(boxes))
            for level, probs in enumerate(outputs["location_probs"], start=2):
                totals.add(f"location_entropy_l{level}", location_entropy(probs))
            if len(batch) > 2:
                for level, (hits, chance) in hit_rates(outputs, batch[2],
                                                       model.cell_boxes).items():
                    totals.add(f"hit_rate_l{level}", hits)
                    totals.add(f"hit_rate_l{level}_chance", chance)
            if attention_writer is not None:
                attention_writer(budget, totals.count, labels, outputs)
            totals.count += int(labels.shape[0])
        row = {"locations": list(budget), "total_locations": budget_lib.total_locations(budget),
               "images": totals.count}
        for name in ("top1", "top5", "attended_only_top1", "attended_only_top5"):
            row[name] = 100.0 * totals.mean(name) if name in totals.sums else None
        row.update({name: 100.0 * totals.mean(name) for name in sorted(totals.sums)
                    if name.startswith(("coverage", "hit_rate"))})
        row.update({name: totals.mean(name) for name in sorted(totals.sums)
                    if name.startswith("location_entropy")})
        rows.append(row)
        if progress is not None:
            progress(f"locations {list(budget)}: top-1 {row['top1']:.2f} %, "
                     f"top-5 {row['top5']:.2f} % on {totals.count} images")
    return rows


def evaluate_glimpses(model, dataset: Iterable, glimpses: int,
                      progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """MGNet's early exits: one pass over `dataset` ((images, labels, ...)
    batches) with `glimpses` glimpses scores every t <= glimpses from its
    `step_logits`. Returns one dict per t: glimpses, images, top1, top5 (%)
    and coverage (% of the image inside the union of glimpses 2..t; the
    first is the whole image at low resolution)."""
    predict = tf.function(lambda images: model(images, glimpses=glimpses, training=False),
                          reduce_retracing=True)
    totals = _Accumulator()
    for batch in dataset:
        images, labels = batch[:2]
        outputs = predict(images)
        for t in range(1, glimpses + 1):
            logits = outputs["step_logits"][:, t - 1]
            totals.add(f"top1_{t}", _top_k_correct(logits, labels, 1))
            totals.add(f"top5_{t}", _top_k_correct(logits, labels, 5))
            if t > 1:
                totals.add(f"coverage_{t}", coverage(tf.concat(outputs["boxes"][1:t], axis=1)))
        totals.count += int(labels.shape[0])
    rows = []
    for t in range(1, glimpses + 1):
        rows.append({"glimpses": t, "images": totals.count,
                     "top1": 100.0 * totals.mean(f"top1_{t}"),
                     "top5": 100.0 * totals.mean(f"top5_{t}"),
                     "coverage": 100.0 * totals.mean(f"coverage_{t}") if t > 1 else 0.0})
        if progress is not None:
            progress(f"{t} glimpse(s): top-1 {rows[-1]['top1']:.2f} %, top-5 "
                     f"{rows[-1]['top5']:.2f} % on {totals.count} images")
    return rows


class AttentionCsv:
    """Writes every image's attended boxes and their probabilities to a CSV:
    one line per attended location (budget, image, label, prediction,
    level, parent feature, cell, probability, box)."""

    HEADER = ["locations", "image", "label", "prediction", "feature", "level", "parent",
              "cell", "probability", "y1", "x1", "y2", "x2"]

    def __init__(self, path: str):
        self._handle = open(path, "w", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.HEADER)

    def __call__(self, budget, batch_start, labels, outputs):
        levels = outputs["feature_levels"].numpy()
        parents = outputs["feature_parents"].numpy()
        probabilities = np.exp(outputs["location_log_probs"].numpy())
        boxes = np.concatenate([b.numpy() for b in outputs["boxes"]], axis=1)
        predictions = np.argmax(outputs["logits"].numpy(), axis=-1)
        locations = outputs["cells"].numpy()
        budget_text = ",".join(str(k) for k in budget)
        for b, label in enumerate(np.asarray(labels)):
            for feature in range(1, len(levels)):
                self._writer.writerow(
                    [budget_text, batch_start + b, int(label), int(predictions[b]), feature,
                     int(levels[feature]), int(parents[feature]),
                     int(locations[b, feature - 1]), f"{probabilities[b, feature - 1]:.6f}",
                     *(f"{v:.6f}" for v in boxes[b, feature])])

    def close(self):
        self._handle.close()
