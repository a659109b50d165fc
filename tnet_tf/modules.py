"""TNet's small modules: location, positional encoding, classification and
feature weighting (Appendix B.1, Tables 4-5)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

layers = tf.keras.layers

# The initialisers of Keras EfficientNet (Tan & Le, 2019).
EFFICIENTNET_CONV_INIT = {"class_name": "VarianceScaling",
                          "config": {"scale": 2.0, "mode": "fan_out",
                                     "distribution": "truncated_normal"}}
EFFICIENTNET_DENSE_INIT = {"class_name": "VarianceScaling",
                           "config": {"scale": 1.0 / 3.0, "mode": "fan_out",
                                      "distribution": "uniform"}}


def conv_initializer(kind: str):
    """A new kernel initialiser for a 1x1 convolution (biases are always zero).

    Each layer gets its own instance: Keras returns identical values when
    one unseeded instance initialises several layers.
    """
    spec = EFFICIENTNET_CONV_INIT if kind == "efficientnet" else "glorot_uniform"
    return tf.keras.initializers.get(dict(spec) if isinstance(spec, dict) else spec)


def dense_initializer(kind: str):
    """A new kernel initialiser for a dense layer (biases are always zero)."""
    spec = EFFICIENTNET_DENSE_INIT if kind == "efficientnet" else "glorot_uniform"
    return tf.keras.initializers.get(dict(spec) if isinstance(spec, dict) else spec)


def location_logits(raw_logits, normalize: bool = True, scale=1.0):
    """The location logits of raw cell scores [N, K]: L2-normalised over the
    K cells (the paper; their softmax then stays near uniform, since
    normalised logits differ by at most 2) or left as they are, times
    `scale` (a temperature of 1 / scale)."""
    logits = tf.cast(raw_logits, tf.float32)
    if normalize:
        logits = tf.math.l2_normalize(logits, axis=-1)
    return logits * tf.cast(scale, tf.float32)


class LocationModule(layers.Layer):
    """Scores the n x n grid cells of a glimpse; returns normalised logits.

    Input: the feature map sampled at the n x n aligned pixels,
    [N, n, n, C], and (variant "context") the final feature vector [N, D].
    Variant "context" (Table 4) concatenates the vector to every position;
    "squeeze_excitation" (Table 5) passes the map through Conv1x1 + SiLU and
    a squeeze-excitation block instead. Both then append the x and y
    coordinates in [-1, 1], each through its own trainable 1 -> 1 linear
    map, apply a hidden 1x1 convolution and a 1x1 convolution to one logit
    per cell, and L2-normalise the n*n logits. Softmax of the output gives
    the location distribution.

    Options beyond the paper (`location_logits`; the defaults are the
    paper's): `normalize=False` keeps the raw logits; `scale` multiplies
    them; `learn_scale` makes the scale a trainable variable (`log_scale`,
    starting at log(scale); only then is the variable created, so the
    paper's modules keep their variables).
    """

    def __init__(self, grid_size: int, variant: str = "squeeze_excitation", width: int = 80,
                 se_width: int = 40, leaky_relu_alpha: float = 0.2,
                 initializer: str = "efficientnet", normalize: bool = True,
                 scale: float = 1.0, learn_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.grid_size, self.variant, self.width = grid_size, variant, width
        self.normalize, self.scale, self.learn_scale = normalize, float(scale), learn_scale
        self.log_scale = (self.add_weight("log_scale", shape=[], trainable=True,
                                          initializer=tf.keras.initializers.Constant(
                                              np.log(self.scale)))
                          if learn_scale else None)
        self.se_width, self.leaky_relu_alpha, self.initializer = se_width, leaky_relu_alpha, initializer

        def conv(filters, activation=None, name=None):
            return layers.Conv2D(filters, 1, activation=activation, name=name,
                                 kernel_initializer=conv_initializer(initializer))

        if variant == "squeeze_excitation":
            self.input_conv = conv(width, "swish", "input_conv")
            self.se_reduce = conv(se_width, "swish", "se_reduce")
            self.se_expand = conv(width, "sigmoid", "se_expand")
            hidden_activation = "swish"
        elif variant == "context":
            hidden_activation = lambda x: tf.nn.leaky_relu(x, leaky_relu_alpha)  # noqa: E731
        else:
            raise ValueError(f"unknown location module variant {variant!r}")
        self.x_map = layers.Dense(1, kernel_initializer=dense_initializer(initializer),
                                  name="x_map")
        self.y_map = layers.Dense(1, kernel_initializer=dense_initializer(initializer),
                                  name="y_map")
        self.hidden_conv = conv(width, hidden_activation, "hidden_conv")
        self.logit_conv = conv(1, None, "logit_conv")
        axis = np.linspace(-1.0, 1.0, grid_size, dtype=np.float32)
        y, x = np.meshgrid(axis, axis, indexing="ij")
        self._x, self._y = x[..., None], y[..., None]

    def call(self, grid_features, context=None):
        x = grid_features
        if self.variant == "context":
            if context is None:
                raise ValueError("the context location module needs the final feature vector")
            tiled = tf.tile(context[:, None, None, :], [1, self.grid_size, self.grid_size, 1])
            x = tf.concat([x, tf.cast(tiled, x.dtype)], axis=-1)
        else:
            x = self.input_conv(x)
            squeezed = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = x * self.se_expand(self.se_reduce(squeezed))
        coordinates = tf.concat([self.x_map(self._x), self.y_map(self._y)], axis=-1)
        coordinates = tf.tile(tf.cast(coordinates, x.dtype)[None], [tf.shape(x)[0], 1, 1, 1])
        x = self.hidden_conv(tf.concat([x, coordinates], axis=-1))
        logits = tf.reshape(self.logit_conv(x), [-1, self.grid_size * self.grid_size])
        scale = self.scale if self.log_scale is None else tf.exp(self.log_scale)
        return location_logits(logits, self.normalize, scale)

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size, "variant": self.variant,
                "width": self.width, "se_width": self.se_width,
                "leaky_relu_alpha": self.leaky_relu_alpha, "initializer": self.initializer,
                "normalize": self.normalize, "scale": self.scale, "learn_scale": self.learn_scale}


class PositionalEncoding(layers.Layer):
    """Injects the positional code of (x, y, scale) into a feature vector.

    "concat_dense" (Table 4): Dense([feature, code]) with a linear output of
    the feature's width. "add_silu" (Table 5): SiLU(feature + Dense(code)).
    """

    def __init__(self, fusion: str = "add_silu", initializer: str = "efficientnet", **kwargs):
        super().__init__(**kwargs)
        if fusion not in ("concat_dense", "add_silu"):
            raise ValueError(f"unknown positional fusion {fusion!r}")
        self.fusion, self.initializer = fusion, initializer

    def build(self, input_shape):
        features = input_shape[0][-1]
        self.dense = layers.Dense(features, kernel_initializer=dense_initializer(self.initializer),
                                  name="dense")
        super().build(input_shape)

    def call(self, inputs):
        features, code = inputs
        code = tf.cast(code, features.dtype)
        if self.fusion == "concat_dense":
            return self.dense(tf.concat([features, code], axis=-1))
        return tf.nn.silu(features + self.dense(code))

    def get_config(self):
        return {**super().get_config(), "fusion": self.fusion, "initializer": self.initializer}


class ClassificationModule(layers.Layer):
    """Dropout followed by a linear layer to class logits."""

    def __init__(self, num_classes: int, dropout: float = 0.0, initializer: str = "efficientnet",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.dropout_rate, self.initializer = num_classes, dropout, initializer
        self.dropout = layers.Dropout(dropout)
        self.dense = layers.Dense(num_classes, kernel_initializer=dense_initializer(initializer),
                                  name="logits")

    def call(self, features, training=None):
        return tf.cast(self.dense(self.dropout(features, training=training)), tf.float32)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "dropout": self.dropout_rate, "initializer": self.initializer}


class FeatureWeighting(layers.Layer):
    """Weights over the extracted features of an image, summing to 1.

    As the authors' CUB / NABirds models: a squeeze-excitation gate (the mean
    over the features, Dense(C / 4) with SiLU, Dense(C) with sigmoid)
    rescales every feature, then Dense(1) scores each rescaled feature and
    a softmax over the features of the image gives the weights (the
    features themselves are averaged unscaled). Input [B, F, C]; output
    weights [B, F].
    """

    def __init__(self, initializer: str = "efficientnet", **kwargs):
        super().__init__(**kwargs)
        self.initializer = initializer

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.se_reduce = layers.Dense(max(1, channels // 4), activation="swish",
                                      kernel_initializer=dense_initializer(self.initializer),
                                      name="se_reduce")
        self.se_expand = layers.Dense(channels, activation="sigmoid",
                                      kernel_initializer=dense_initializer(self.initializer),
                                      name="se_expand")
        self.score = layers.Dense(1, kernel_initializer=dense_initializer(self.initializer),
                                  name="score")
        super().build(input_shape)

    def call(self, features):
        gate = self.se_expand(self.se_reduce(tf.reduce_mean(features, axis=1)))   # [B, C]
        scores = self.score(features * gate[:, None, :])[..., 0]
        return tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)

    def get_config(self):
        return {**super().get_config(), "initializer": self.initializer}
