"""MGNet (Tan, Dong, Ma, BMVC 2021): T glimpses of one small size, each
placed by a localization network that reads everything seen so far.

    model = tnet_tf.MGNet(tnet_tf.MGNetConfig(num_classes=100))   # ResNet-50, 4 x 96 px of 224
    outputs = model(images, glimpses=4)     # images [B, 224, 224, 3] in [-1, 1]
    outputs["logits"], outputs["step_logits"], outputs["boxes"]

Step t cuts a glimpse of `glimpse_size` px from the full-resolution image
with `tf.image.crop_and_resize` (differentiable with respect to its boxes);
glimpse 1 is the whole image (the identity region). The backbone's pooled
feature h_t, with the region's affine matrix appended (stop-gradient),
joins the tokens of the earlier glimpses; single-head self-attention with
LayerNorm and ReLU fuses them into F_t (eq. 3). A global classifier reads
F_t at every step, so any t <= T is an early exit; a localization network
predicts the next region from F_t (eq. 4), with its gradient rescaled by s
(eq. 5). In training a glimpse classifier also reads every h_t, and the
loss is alpha * glimpse loss + (1 - alpha) * global loss (eqs. 6-8).

Regions follow the spatial-transformer convention of the paper: scale a_s
in [min_scale, max_scale] and translation (a_x, a_y) in [a_s - 1, 1 - a_s]
(image coordinates in [-1, 1]), so a region spans a_s of the image side and
never leaves it. As boxes they are edge-normalised [y1, x1, y2, x2], TNet's
convention: x1 = (a_x - a_s + 1) / 2, x2 = (a_x + a_s + 1) / 2.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tnet_tf import geometry, losses, training as training_lib
from tnet_tf.backbones import build_backbone, set_backbone_level
from tnet_tf.config import INITIALIZERS, BackboneConfig, TNetConfig, _check_choice, \
    _check_probability
from tnet_tf.modules import ClassificationModule, dense_initializer

layers = tf.keras.layers
IDENTITY_REGION = (1.0, 0.0, 0.0)       # (a_s, a_x, a_y): the whole image
AFFINE_SIZE = 6                          # the flattened 2 x 3 matrix of eq. (1)


@dataclasses.dataclass(frozen=True)
class MGNetConfig:
    """An MGNet architecture. The defaults are the paper's ImageNet-100 model
    (section 4.1): ResNet-50, T = 4 glimpses of 96 px from 224 px images
    (M = 7/3), a_s in [0.2, 0.5], s = 0.01, alpha = 0.6.

    Attributes:
      num_classes: output classes.
      backbone: the feature extractor of every glimpse.
      input_size: side of the full-resolution input (profiling, pipelines).
      glimpse_size: side in px of every glimpse (input_size / M).
      glimpses: T, the default number of glimpses; calls may stop earlier.
      min_scale, max_scale: the range of a_s, a region's side as a fraction
        of the image side.
      gradient_scale: s of eq. (5), the factor on the gradient that reaches
        the localization network through the regions.
      glimpse_loss_weight: alpha of eq. (6).
      dropout: drop probability before the global and glimpse classifiers.
      initializer: "glorot" or "efficientnet" for the heads.
    """

    num_classes: int = 100
    backbone: BackboneConfig = dataclasses.field(
        default_factory=lambda: BackboneConfig(name="resnet50"))
    input_size: int = 224
    glimpse_size: int = 96
    glimpses: int = 4
    min_scale: float = 0.2
    max_scale: float = 0.5
    gradient_scale: float = 0.01
    glimpse_loss_weight: float = 0.6
    dropout: float = 0.0
    initializer: str = "glorot"

    def __post_init__(self):
        if isinstance(self.backbone, dict):
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.glimpse_size < 32:
            raise ValueError(f"glimpse_size must be >= 32 px, got {self.glimpse_size}")
        if self.input_size < self.glimpse_size:
            raise ValueError(f"input_size {self.input_size} is smaller than glimpse_size "
                             f"{self.glimpse_size}")
        if self.glimpses < 1:
            raise ValueError(f"glimpses must be >= 1, got {self.glimpses}")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1; got min_scale "
                             f"{self.min_scale}, max_scale {self.max_scale}")
        if self.gradient_scale < 0:
            raise ValueError(f"gradient_scale must be >= 0, got {self.gradient_scale}")
        if not 0.0 <= self.glimpse_loss_weight <= 1.0:
            raise ValueError(f"glimpse_loss_weight must be in [0, 1], got "
                             f"{self.glimpse_loss_weight}")
        _check_probability("dropout", self.dropout)
        _check_choice("initializer", self.initializer, INITIALIZERS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MGNetConfig":
        return cls(**values)

    @classmethod
    def from_tnet(cls, config: TNetConfig, **overrides) -> "MGNetConfig":
        """The MGNet of a TNet preset: its classes, backbone, input size, heads'
        dropout and initializer, with glimpses of its base resolution."""
        fields = dict(num_classes=config.num_classes, backbone=config.backbone,
                      input_size=config.input_size, glimpse_size=config.base_resolution,
                      dropout=config.dropout, initializer=config.initializer)
        fields.update(overrides)
        return cls(**fields)


# ----------------------------------------------------------------------------
# Regions (pure functions)


def scale_gradient(x, scale: float):
    """Phi of eq. (5): the identity forward, the gradient times `scale` backward."""
    @tf.custom_gradient
    def identity(value):
        return tf.identity(value), lambda upstream: upstream * scale
    return identity(x)


def regions_from_unit(unit, min_scale: float, max_scale: float):
    """Eq. (4) after the sigmoid: unit [..., 3] in [0, 1] -> regions [..., 3]
    (a_s, a_x, a_y) with a_s in [min_scale, max_scale] and a_x, a_y in
    [a_s - 1, 1 - a_s]."""
    scale = unit[..., 0] * (max_scale - min_scale) + min_scale
    shift = (2.0 * unit[..., 1:] - 1.0) * (1.0 - scale[..., None])
    return tf.concat([scale[..., None], shift], axis=-1)


def region_boxes(regions):
    """Regions [..., 3] (a_s, a_x, a_y) -> edge-normalised boxes [..., 4]
    [y1, x1, y2, x2]; the identity region is [0, 0, 1, 1]."""
    scale, x, y = tf.unstack(regions, axis=-1)
    return tf.stack([(y - scale + 1.0) / 2.0, (x - scale + 1.0) / 2.0,
                     (y + scale + 1.0) / 2.0, (x + scale + 1.0) / 2.0], axis=-1)


def regions_around(boxes, scale: float):
    """Edge-normalised boxes [..., 4] -> regions [..., 3] of side `scale`
    centred on each box (moved inside the image where the box is near an edge):
    the glimpses an oracle that knows where the objects are would take."""
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    limit = 1.0 - scale
    centre_x = tf.clip_by_value(x1 + x2 - 1.0, -limit, limit)
    centre_y = tf.clip_by_value(y1 + y2 - 1.0, -limit, limit)
    return tf.stack([tf.fill(tf.shape(centre_x), float(scale)), centre_x, centre_y], axis=-1)


def affine_matrices(regions):
    """The flattened matrices A of eq. (1), [a_s, 0, a_x, 0, a_s, a_y]: [..., 6]."""
    scale, x, y = tf.unstack(regions, axis=-1)
    zero = tf.zeros_like(scale)
    return tf.stack([scale, zero, x, zero, scale, y], axis=-1)


# ----------------------------------------------------------------------------
# Layers


class FeatureFusion(layers.Layer):
    """Eq. (3): single-head self-attention over the tokens H_t [B, t, d], then
    LayerNorm and ReLU; returns F_t [B, d], the fused row of the last token.

    As eq. (3) is written, every step attends over all t tokens again (the
    projections of every row are recomputed): this is what the paper's FLOPs
    count (3.172 GFLOPs for ResNet-50, T = 4, within 0.1 %). Caching the
    keys and values of earlier steps would give the same F_t for 16 instead
    of 40 d x d products at T = 4 (3 % of that model's FLOPs).
    """

    def __init__(self, initializer: str = "glorot", **kwargs):
        super().__init__(**kwargs)
        self.initializer = initializer

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.query, self.key, self.value, self.output_projection = (
            layers.Dense(width, kernel_initializer=dense_initializer(self.initializer), name=n)
            for n in ("query", "key", "value", "output"))
        self.norm = layers.LayerNormalization(name="norm")
        super().build(input_shape)

    def call(self, tokens):
        query, key, value = self.query(tokens), self.key(tokens), self.value(tokens)
        scores = tf.matmul(query, key, transpose_b=True) / tf.sqrt(
            tf.cast(tokens.shape[-1], query.dtype))
        mixed = self.output_projection(tf.matmul(tf.nn.softmax(scores, axis=-1), value))
        return tf.nn.relu(self.norm(mixed)[:, -1])

    def get_config(self):
        return {**super().get_config(), "initializer": self.initializer}


# ----------------------------------------------------------------------------
# The model


def _unpack(data):
    """(images, labels) or ((images, regions), labels) -> images, regions or None, labels."""
    x, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
    images, regions = x if isinstance(x, (tuple, list)) else (x, None)
    return images, regions, tf.cast(labels, tf.int32)


class MGNet(tf.keras.Model):
    """MGNet as a Keras model with its learning rule (`compile`, `fit`).

    `model(images, glimpses=None, training=False, regions=None)`

    Args:
      images: [B, H, W, 3] float images in [-1, 1] at full resolution.
      glimpses: how many glimpses to take (early exit); None: config.glimpses.
      regions: [B, >= T - 1, 3], fixed regions (a_s, a_x, a_y) of the glimpses
        after the first, in place of the localization head's, e.g. an oracle's
        (`regions_around`). `fit` / `evaluate` take them as x = (images, regions).

    Returns a dict (T = glimpses taken):
      logits: [B, classes], the global classifier after the last glimpse.
      step_logits: [B, T, classes], the global classifier after each glimpse.
      glimpse_logits: [B, T, classes], the glimpse classifier on each glimpse
        alone (training only: the paper drops it at inference).
      regions: [B, T, 3], (a_s, a_x, a_y) of each glimpse.
      boxes: list, per glimpse, [B, 1, 4] edge-normalised boxes (TNet's
        per-level convention).
      features: [B, T, D], the backbone's feature of each glimpse.
      fused_features: [B, T, D + 6], F_t after each glimpse.
    """

    def __init__(self, config: MGNetConfig, **kwargs):
        super().__init__(name=kwargs.pop("name", "mgnet"), **kwargs)
        self.config = config
        self.backbone = build_backbone(config.backbone, config.glimpse_size)
        self.fusion = FeatureFusion(config.initializer, name="fusion")
        self.localization = layers.Dense(
            3, kernel_initializer=dense_initializer(config.initializer), name="localization")
        self.classifier = ClassificationModule(config.num_classes, config.dropout,
                                               config.initializer, name="classifier")
        self.glimpse_classifier = ClassificationModule(config.num_classes, config.dropout,
                                                       config.initializer,
                                                       name="glimpse_classifier")
        self.xla_compatible = False      # as TNet: gathers instead of CropAndResize under XLA

    def resolve_glimpses(self, glimpses: Optional[int]) -> int:
        glimpses = self.config.glimpses if glimpses is None else glimpses
        if isinstance(glimpses, (list, tuple)) and len(glimpses) == 1:
            glimpses = glimpses[0]          # a budget written as TNet's, e.g. [3]
        if int(glimpses) != glimpses or glimpses < 1:
            raise ValueError(f"glimpses must be a whole number >= 1; got {glimpses!r}")
        return int(glimpses)

    def _glimpse(self, images, regions, step, training):
        shape = tf.shape(images)
        size = self.config.glimpse_size
        boxes = geometry.crop_and_resize_boxes(region_boxes(regions), shape[1], shape[2], size)
        crop = geometry.crop_and_resize if self.xla_compatible else tf.image.crop_and_resize
        glimpse = crop(tf.cast(images, tf.float32), boxes, tf.range(shape[0]), [size, size])
        # Per-level batch norm (compact backbone): the whole image, then the zooms.
        set_backbone_level(self.backbone, min(step, 1) + 1)
        return self.backbone(glimpse, training=training)[1]

    def call(self, images, glimpses=None, training=None, regions=None):
        steps = self.resolve_glimpses(glimpses)
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be a [batch, height, width, 3] tensor; got shape "
                             f"{images.shape}")
        config = self.config
        fixed = None if regions is None else tf.cast(regions, tf.float32)
        if fixed is not None and (fixed.shape.rank != 3 or fixed.shape[-1] != 3
                                  or (fixed.shape[1] is not None and fixed.shape[1] < steps - 1)):
            raise ValueError(f"regions must be [batch, >= {steps - 1}, 3] for {steps} glimpses; "
                             f"got shape {fixed.shape}")
        regions = tf.tile(tf.constant([IDENTITY_REGION]), [tf.shape(images)[0], 1])
        tokens, features, fused, step_logits, glimpse_logits, all_regions = [], [], [], [], [], []
        for step in range(steps):
            feature = self._glimpse(images, regions, step, training)
            code = tf.cast(tf.stop_gradient(affine_matrices(regions)), feature.dtype)
            tokens.append(tf.concat([feature, code], axis=-1))
            state = self.fusion(tf.stack(tokens, axis=1))                       # F_t
            step_logits.append(self.classifier(state, training=training))
            if training:
                glimpse_logits.append(self.glimpse_classifier(feature, training=training))
            features.append(feature)
            fused.append(state)
            all_regions.append(regions)
            if step + 1 < steps and fixed is not None:
                regions = fixed[:, step]
            elif step + 1 < steps:
                unit = tf.sigmoid(tf.cast(self.localization(state), tf.float32))
                regions = regions_from_unit(scale_gradient(unit, config.gradient_scale),
                                            config.min_scale, config.max_scale)
        # Every head exists whatever the call used (weights, checkpoints, parameter
        # counts): an unused one is built on zero rows, which costs no multiplication.
        if not self.localization.built:
            self.localization(state[:0])
        if not self.glimpse_classifier.built:
            self.glimpse_classifier(feature[:0])
        outputs = {
            "logits": step_logits[-1],
            "step_logits": tf.stack(step_logits, axis=1),
            "regions": tf.stack(all_regions, axis=1),
            "boxes": [region_boxes(r)[:, None, :] for r in all_regions],
            "features": tf.stack(features, axis=1),
            "fused_features": tf.stack(fused, axis=1),
        }
        if training:
            outputs["glimpse_logits"] = tf.stack(glimpse_logits, axis=1)
        return outputs

    # ------------------------------------------------------------------
    # The learning rule

    def compile(self, optimizer="adam", *, glimpse_loss_weight: Optional[float] = None,
                glimpses: Optional[int] = None, weight_decay: float = 0.0, **kwargs):
        """glimpse_loss_weight: alpha of eq. (6) (None: the config's).
        glimpses: T in training and evaluation (None: the config's).
        weight_decay: L2 factor, normalisation layers excluded."""
        super().compile(optimizer=optimizer, **kwargs)
        training_lib.log_global_metrics(self)
        self.xla_compatible = bool(kwargs.get("jit_compile"))
        self.glimpse_loss_weight = (self.config.glimpse_loss_weight if glimpse_loss_weight
                                    is None else float(glimpse_loss_weight))
        self.training_glimpses = self.resolve_glimpses(glimpses)
        self.weight_decay = float(weight_decay)
        names = ["loss", "global_loss", "glimpse_loss"] + (["weight_decay"] if weight_decay
                                                           else [])
        self.trackers = {name: tf.keras.metrics.Mean(name) for name in names}
        self.top1 = tf.keras.metrics.SparseCategoricalAccuracy("top1")
        self.top5 = tf.keras.metrics.SparseTopKCategoricalAccuracy(
            min(5, self.config.num_classes), "top5")

    @property
    def metrics(self):
        if getattr(self, "trackers", None) is None:
            return super().metrics
        return list(self.trackers.values()) + [self.top1, self.top5]

    def _update_metrics(self, terms, labels, logits, penalty=None):
        self.trackers["loss"].update_state(terms["total"] + (0.0 if penalty is None
                                                             else penalty))
        self.trackers["global_loss"].update_state(terms["global"])
        self.trackers["glimpse_loss"].update_state(terms["glimpse"])
        if penalty is not None:
            self.trackers["weight_decay"].update_state(penalty)
        self.top1.update_state(labels, logits)
        self.top5.update_state(labels, logits)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        images, regions, labels = _unpack(data)
        penalty = None
        with tf.GradientTape() as tape:
            outputs = self(images, glimpses=self.training_glimpses, training=True,
                           regions=regions)
            terms = losses.mgnet_loss(outputs["step_logits"], outputs["glimpse_logits"],
                                      labels, self.glimpse_loss_weight)
            loss = tf.nn.compute_average_loss(terms["total"])
            if self.weight_decay:
                penalty = training_lib.l2_penalty(training_lib.decayed_variables(self),
                                                  self.weight_decay)
                loss += tf.nn.scale_regularization_loss(penalty)
            scaler = training_lib.loss_scaler(self)
            if scaler is not None:
                loss = scaler.get_scaled_loss(loss)
        training_lib.apply_gradients(self, tape, loss)
        return self._update_metrics(terms, labels, outputs["logits"], penalty)

    def test_step(self, data):
        images, regions, labels = _unpack(data)
        outputs = self(images, glimpses=self.training_glimpses, training=False, regions=regions)
        # The glimpse classifier is a training head: evaluated here for the loss only.
        glimpse_logits = self.glimpse_classifier(outputs["features"], training=False)
        terms = losses.mgnet_loss(outputs["step_logits"], glimpse_logits, labels,
                                  self.glimpse_loss_weight)
        return self._update_metrics(terms, labels, outputs["logits"])

    def get_config(self):
        return {"config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(MGNetConfig.from_dict(config["config"]))
