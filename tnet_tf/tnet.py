"""TNet: walk an image pyramid top down, attending the most useful cells.

Level 1 sees the whole image at the base resolution. The location module
scores the n x n grid of overlapping cells of every glimpse; the chosen
cells become the glimpses of the next level, cut from the full-resolution
input with one `tf.image.crop_and_resize` call per level (boxes are
composed across levels, so intermediate crops are never materialised).
Every glimpse goes through the same backbone; its feature vector gets the
positional code of its (x, y, scale) and the encoded features are averaged
(or weighted) and classified.

This module is the forward model (`call`); `tnet_tf.training` subclasses it
with the learning rule (`compile`, `train_step`, `test_step`, metrics), and
those subclasses are the public `tnet_tf.TNet` and `tnet_tf.Classifier`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tnet_tf import budget, geometry
from tnet_tf.backbones import build_backbone, set_backbone_level
from tnet_tf.config import TNetConfig
from tnet_tf.modules import ClassificationModule, FeatureWeighting, LocationModule, PositionalEncoding


SELECTIONS = ("top_k", "sample")


def select_cells(log_probs, count: int, selection: str = "top_k", seed: Optional[int] = None,
                 random_cells=None):
    """Indices [N, count] of the cells to attend, given log-probabilities [N, K].

    "top_k": the `count` most probable cells (the paper's approximation of
    sampling without replacement, Appendix A.2). "sample": sampling without
    replacement by the Gumbel-top-k trick (the top `count` of log p + Gumbel
    noise are an exact sample without replacement, in sampling order).
    random_cells: optional boolean scalar (Python or tensor); where true, the
    cells are drawn uniformly at random without replacement whatever the
    distribution (the exploration warm-up of `training.TNet.compile`). A
    float scalar instead is a probability: each row independently draws
    random cells with that probability (epsilon-random exploration).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; "
                         f"got {selection!r}")
    scores = log_probs
    if selection == "sample" or random_cells is not None:
        uniform = tf.random.uniform(tf.shape(log_probs), minval=1e-12, maxval=1.0, seed=seed)
        gumbel = -tf.math.log(-tf.math.log(uniform))
        if selection == "sample":
            scores = log_probs + gumbel
        if random_cells is not None:
            explore = tf.convert_to_tensor(random_cells)
            if explore.dtype != tf.bool:
                rows = tf.shape(log_probs)[:1]
                explore = tf.random.uniform(rows, seed=seed)[:, None] < tf.cast(explore,
                                                                                tf.float32)
            scores = tf.where(explore, gumbel, scores)
    return tf.math.top_k(scores, k=count, sorted=True).indices


class TNet(tf.keras.Model):
    """TNet (Papadopoulos et al., 2021) as a Keras model: the forward pass
    (`tnet_tf.TNet` is `training.TNet`, this class with its learning rule).

    `model(images, locations=None, training=False, selection="top_k",
           chosen_locations=None, random_cells=None)`

    Args:
      images: [B, H, W, 3] float images in [-1, 1] at full resolution.
      locations: cells attended per level below the first, e.g. [2] or
        [2, 1] (1 cell per level-2 glimpse); None uses `config.locations`.
        Any budget the image size can reach works without rebuilding.
      selection: "top_k" or "sample" (Gumbel-top-k, for training).
      chosen_locations: optional [B, A] int cells to attend instead of
        selecting them, in the order of the `locations` output (e.g. the
        `locations` of an earlier call); their log-probabilities are still
        taken from the model's own distributions. Used to evaluate the
        learning rule with the locations fixed.
      random_cells: optional boolean scalar; if true, cells are drawn
        uniformly at random (without replacement) instead of by `selection`;
        their log-probabilities still come from the model's distributions.
        A float scalar is the probability that a glimpse draws random cells
        (each glimpse independently; `select_cells`).

    Returns a dict (F = number of extracted features, level 1 first, then
    level 2, then level 3 grouped by parent; A = F - 1 attended locations):
      logits: [B, classes], from the averaged (or weighted) features.
      feature_logits: [B, F, classes], each feature classified alone.
      features: [B, F, D], the position-encoded features.
      pooled_features: [B, D], their (weighted) average, which the classifier reads.
      feature_weights: [B, F], the weights of the features (sum to 1).
      feature_levels: [F] int32, the level of each feature.
      feature_parents: [F] int32, the feature whose grid each feature's
        cell was chosen from (-1 for level 1).
      cells: [B, A] int32, the chosen cell of each attended feature
        (row-major index in its n x n grid).
      locations: deprecated alias of "cells", kept for one release
        ("locations" now names only the budget).
      location_log_probs: [B, A], log-probability of each chosen cell under
        its own grid's distribution; their sum is the log-probability of the
        whole location sequence in the paper's approximation (A.2).
      location_probs: list, per level that chose cells, [B, P, n * n]: the
        full distributions of the P glimpses of that level.
      boxes: list, per level, [B, P, 4] boxes of the glimpses
        `[y1, x1, y2, x2]` as fractions of the input (edge-normalised).
    """

    def __init__(self, config: TNetConfig, **kwargs):
        super().__init__(name=kwargs.pop("name", "tnet"), **kwargs)
        self.config = config
        base, n = config.base_resolution, config.grid_size
        self.backbone = build_backbone(config.backbone, base)
        tap = self.backbone.outputs[0].node.layer.name
        rows, cols = geometry.receptive_fields(self.backbone)[tap]
        self.grid_rows = geometry.aligned_indices(rows.centres(), base, n, config.cell_fraction)
        self.grid_cols = geometry.aligned_indices(cols.centres(), base, n, config.cell_fraction)
        if config.grid_indices is not None:
            if max(config.grid_indices) >= min(len(rows.centres()), len(cols.centres())):
                raise ValueError(f"grid_indices {config.grid_indices} lie outside the "
                                 f"{len(rows.centres())} x {len(cols.centres())} feature map")
            self.grid_rows = self.grid_cols = np.array(config.grid_indices)
        self.cell_boxes = geometry.grid_boxes(n, config.cell_fraction).astype(np.float32)
        self.location_module = LocationModule(
            n, config.location_module, config.location_width, config.location_se_width,
            config.backbone.leaky_relu_alpha, config.initializer,
            normalize=config.location_normalize, scale=config.location_scale,
            learn_scale=config.learn_location_scale, name="location_module")
        self.positional_encoding = PositionalEncoding(
            config.positional_fusion, config.initializer, name="positional_encoding")
        self.classifier = ClassificationModule(
            config.num_classes, config.dropout, config.initializer, name="classifier")
        self.feature_weighting = (FeatureWeighting(config.initializer, name="feature_weighting")
                                  if config.feature_weighting else None)
        # True: glimpses are cut by gathers that XLA compiles (`geometry.crop_and_resize`)
        # instead of tf.image.crop_and_resize (faster uncompiled); set it before wrapping
        # the model in tf.function(jit_compile=True). `compile(jit_compile=True)` sets it.
        self.xla_compatible = False

    # ------------------------------------------------------------------
    def resolve_locations(self, locations: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """Validates a per-level location budget; None gives the config's."""
        if locations is None:
            locations = self.config.locations
        elif isinstance(locations, (int, np.integer)):
            locations = (int(locations),)
        return budget.check(locations, self.config.grid_size)

    def _check_images(self, images, locations):
        shape = images.shape
        if shape.rank != 4:
            raise ValueError(f"images must be a [batch, height, width, 3] tensor; got shape {shape}")
        if shape[-1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels; got {shape[-1]} "
                             f"(shape {shape})")
        if shape[1] is None or shape[2] is None:
            return
        size, base = min(shape[1], shape[2]), self.config.base_resolution
        if size < base:
            raise ValueError(f"images of {shape[1]}x{shape[2]} px are smaller than the "
                             f"{base} px base resolution")
        levels = budget.levels_needed(locations)
        reachable = budget.reachable_levels(size, base, self.config.cell_fraction)
        if levels > reachable:
            needed = budget.smallest_size(levels, base, self.config.cell_fraction)
            raise ValueError(
                f"images of {shape[1]}x{shape[2]} px cannot reach {levels} levels "
                f"(locations {list(locations)}): a level adds resolution only while the "
                f"previous level's cells span more than the {base} px base resolution, so "
                f"{levels} levels need images larger than {needed:.0f} px; at this size at "
                f"most {reachable} level(s)")

    def _glimpse_features(self, images, boxes, training, level, windows=None):
        """The backbone outputs of the glimpses `glimpses` cuts."""
        glimpses = self.glimpses(images, boxes, level, windows)
        set_backbone_level(self.backbone, level)
        return self.backbone(glimpses, training=training)

    def glimpses(self, images, boxes, level: int, windows=None):
        """Crops boxes [B, P, 4] from the images at the base resolution (with
        `windows`, the integer grid's (pixel windows [B, P, 4], their valid parts
        [B, P, 4], their (h, w)), cuts those and resizes them): [B * P, r, r, 3]."""
        count = boxes.shape[1]
        shape = tf.shape(images)
        indices = tf.repeat(tf.range(shape[0]), count)
        size = [self.config.base_resolution] * 2
        if windows is not None:
            # The release resizes each whole-pixel cell (its padding included) to the base.
            corners, valid, extent = windows
            cells = geometry.cut_windows(images, tf.reshape(corners[..., :2], [-1, 2]),
                                         _whole(extent), tf.reshape(valid, [-1, 4]), indices)
            return tf.image.resize(cells, size, method="bilinear", antialias=False)
        factor = self._antialias_factor(images, level)
        crop_boxes = geometry.crop_and_resize_boxes(tf.reshape(boxes, [-1, 4]), shape[1],
                                                    shape[2], self.config.base_resolution * factor)
        # XLA has no CropAndResize kernel: compiled steps take the gather version.
        crop = geometry.crop_and_resize if self.xla_compatible else tf.image.crop_and_resize
        glimpses = crop(tf.cast(images, tf.float32), crop_boxes, indices,
                        [s * factor for s in size])
        return tf.nn.avg_pool2d(glimpses, factor, factor, "VALID") if factor > 1 else glimpses

    def _antialias_factor(self, images, level: int) -> int:
        """k of `TNetConfig.glimpse_antialias`: whole image pixels per glimpse pixel
        of a level-`level` cell (1 when off or the image size is not static)."""
        height, width = images.shape[1], images.shape[2]
        if not self.config.glimpse_antialias or height is None or width is None:
            return 1
        pixels = min(height, width) * self.config.cell_fraction ** (level - 1) / self.config.base_resolution
        return max(1, int(pixels + 1e-6))

    def _integer_cells(self, windows, image_size, index, shape):
        """The integer grid's windows (see `_glimpse_features`) of the cells
        `index` [B*P, k] of the glimpses `windows` (None: the whole images of
        (h, w) `image_size`), as the release cuts them, shaped `shape`."""
        if windows is None:
            whole = tf.concat([tf.zeros([2]), tf.cast(image_size, tf.float32)], 0)[None, None]
            windows = (whole, whole, image_size)
        parent, parent_valid = (tf.reshape(w, [-1, 1, 4]) for w in windows[:2])
        cell, stride, pad_before = geometry.integer_grid(windows[2], self.config.grid_size,
                                                         self.config.cell_fraction)
        n = self.config.grid_size
        row_col = tf.cast(tf.stack([index // n, index % n], axis=-1), tf.float32)
        start = (parent[..., :2] + row_col * tf.cast(stride, tf.float32)
                 - tf.cast(pad_before, tf.float32))                               # [B*P, k, 2]
        child = tf.concat([start, start + tf.cast(cell, tf.float32)], axis=-1)
        valid = tf.concat([tf.maximum(child[..., :2], parent_valid[..., :2]),
                           tf.minimum(child[..., 2:], parent_valid[..., 2:])], axis=-1)
        return tf.reshape(child, shape), tf.reshape(valid, shape), cell

    def call(self, images, locations=None, training=None, selection="top_k",
             chosen_locations=None, random_cells=None):
        locations = self.resolve_locations(locations)
        images = tf.convert_to_tensor(images)
        self._check_images(images, locations)
        config, n = self.config, self.config.grid_size
        batch = tf.shape(images)[0]
        boxes = tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [batch, 1, 1])
        cells = tf.zeros([batch, 1, 2])   # (x, y) cell coordinates at the current level
        features, levels, parents = [], [], [-1]
        chosen, chosen_log_probs, distributions, all_boxes = [], [], [], [boxes]
        # The integer grid (config.integer_grid): the glimpses' pixel windows, the part
        # of each that holds image pixels and their (h, w); numbers for static sizes.
        static = images.shape[1:3]
        image_size = (np.array(static, np.float64) if static.is_fully_defined()
                      else tf.cast(tf.shape(images)[1:3], tf.float32))
        windows = None
        if chosen_locations is not None:
            chosen_locations = tf.cast(tf.convert_to_tensor(chosen_locations), tf.int32)
            attended = budget.total_locations(locations)
            if chosen_locations.shape.rank != 2 or chosen_locations.shape[1] != attended:
                raise ValueError(f"chosen_locations must have shape [batch, {attended}] for "
                                 f"locations {list(locations)}; got {chosen_locations.shape}")

        for level in range(1, len(locations) + 2):
            count = boxes.shape[1]
            feature_map, vector = self._glimpse_features(images, boxes, training, level,
                                                         windows)
            vector = tf.reshape(vector, [batch, count, vector.shape[-1]])
            code = geometry.positional_code(cells[..., 0], cells[..., 1],
                                            tf.fill(tf.shape(cells[..., 0]), float(level - 1)),
                                            config.code_size, config.code_variant)
            first = len(levels)
            features.append(self.positional_encoding([vector, code]))
            levels += [level] * count
            if level > len(locations):
                break
            grid = tf.gather(tf.gather(feature_map, self.grid_rows, axis=1), self.grid_cols, axis=2)
            context = tf.reshape(vector, [-1, vector.shape[-1]])
            if training and config.location_stop_gradient:
                grid, context = tf.stop_gradient(grid), tf.stop_gradient(context)
            log_probs = tf.nn.log_softmax(self.location_module(grid, context=context), axis=-1)
            distributions.append(tf.reshape(tf.exp(log_probs), [batch, count, n * n]))
            k = locations[level - 1]
            if k == 0:
                break
            if chosen_locations is None:
                index = select_cells(log_probs, k, selection,                  # [B*P, k]
                                     random_cells=random_cells)
            else:
                start = sum(c.shape[1] for c in chosen)
                index = tf.reshape(chosen_locations[:, start:start + count * k], [-1, k])
            chosen.append(tf.reshape(index, [batch, count * k]))
            chosen_log_probs.append(tf.reshape(tf.gather(log_probs, index, batch_dims=1),
                                               [batch, count * k]))
            if config.integer_grid:
                windows = self._integer_cells(windows, image_size, index, [batch, count * k, 4])
                boxes = windows[0] / tf.cast(tf.tile(image_size, [2]), tf.float32)
            else:
                child = tf.gather(self.cell_boxes, index)                        # [B*P, k, 4]
                boxes = tf.reshape(geometry.compose_boxes(tf.reshape(boxes, [-1, 1, 4]), child),
                                   [batch, count * k, 4])
            offsets = tf.cast(tf.stack([index % n, index // n], axis=-1), tf.float32)
            cells = tf.reshape(tf.reshape(cells, [-1, 1, 2]) * n + offsets, [batch, count * k, 2])
            all_boxes.append(boxes)
            parents += [first + p for p in range(count) for _ in range(k)]

        encoded = tf.concat(features, axis=1)                                    # [B, F, D]
        if self.feature_weighting is not None:
            weights = self.feature_weighting(encoded)
        else:
            weights = tf.fill(tf.shape(encoded)[:2], 1.0 / len(levels))
        pooled = tf.reduce_sum(tf.cast(weights[..., None], encoded.dtype) * encoded, axis=1)
        attended = len(levels) - 1
        cells_chosen = (tf.concat(chosen, axis=1) if chosen
                        else tf.zeros([batch, attended], tf.int32))
        return {
            "logits": self.classifier(pooled, training=training),
            "feature_logits": self.classifier(encoded, training=training),
            "features": encoded,
            "pooled_features": pooled,
            "feature_weights": weights,
            "feature_levels": tf.constant(levels, tf.int32),
            "feature_parents": tf.constant(parents, tf.int32),
            "cells": cells_chosen,
            "locations": cells_chosen,     # deprecated alias of "cells"
            "location_log_probs": (tf.concat(chosen_log_probs, axis=1) if chosen_log_probs
                                   else tf.zeros([batch, attended])),
            "location_probs": distributions,
            "boxes": all_boxes,
        }

    def get_config(self):
        return {"config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(TNetConfig.from_dict(config["config"]))


def _whole(extent):
    """A window's (h, w) as ints when static (numpy), else as an int32 tensor."""
    return tf.cast(extent, tf.int32) if tf.is_tensor(extent) else [int(v) for v in extent]


class Classifier(tf.keras.Model):
    """The paper's baselines: the backbone on the whole image, then the
    classification module (BagNet-77 fully convolutional at 224 px,
    EfficientNet-Bx at any input size). Returns logits [B, classes].
    (`tnet_tf.Classifier` is `training.Classifier`, with its contrastive term.)"""

    def __init__(self, config: TNetConfig, input_size: Optional[int] = None, **kwargs):
        super().__init__(name=kwargs.pop("name", "classifier_baseline"), **kwargs)
        self.config = config
        self.input_size = int(input_size or config.input_size)
        self.backbone = build_backbone(config.backbone, self.input_size)
        self.classifier = ClassificationModule(config.num_classes, config.dropout,
                                               config.initializer, name="classifier")

    def call(self, images, training=None, return_features=False):
        """Logits [B, classes]; with return_features also the pooled backbone
        features [B, D] the classifier reads."""
        images = tf.convert_to_tensor(images)
        expected = (self.input_size, self.input_size, 3)
        if images.shape.rank != 4 or any(
                size not in (None, want) for size, want in zip(images.shape[1:], expected)):
            raise ValueError(f"images must have shape [batch, {self.input_size}, "
                             f"{self.input_size}, 3]; got {images.shape}")
        _, vector = self.backbone(images, training=training)
        logits = self.classifier(vector, training=training)
        return (logits, vector) if return_features else logits

    def get_config(self):
        return {"config": self.config.to_dict(), "input_size": self.input_size}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(TNetConfig.from_dict(config["config"]), config["input_size"])
