"""Feature extraction modules: BagNet-77 (Table 4), EfficientNet-B0..B4 and
ResNet-50 (MGNet's backbone).

Every backbone is a flat functional `tf.keras.Model` that takes images in
[-1, 1] and returns `[feature_map, feature_vector]`: the intermediate map
that feeds the location module and the globally pooled final feature. Being
flat and functional lets `geometry.receptive_fields` derive where each
feature-map pixel looks, and lets FLOPs counters see every layer.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tnet_tf.config import BackboneConfig

layers = tf.keras.layers

# BagNet-77 feature extraction (Table 4): (kernel, channels, stride, padding) per ConvBlock.
BAGNET77_BLOCKS = (
    (3, 256, 2, "same"), (3, 256, 1, "same"), (1, 256, 1, "same"),
    (3, 512, 2, "same"), (3, 512, 1, "same"), (1, 512, 1, "same"), (1, 512, 1, "same"),
    (3, 1024, 2, "valid"), (3, 1024, 1, "same"),
    (1, 1024, 1, "same"), (1, 1024, 1, "same"), (1, 1024, 1, "same"), (1, 1024, 1, "same"),
    (3, 2048, 1, "valid"), (3, 2048, 1, "same"), (1, 2048, 1, "same"),
)
BAGNET77_LOCATION_LAYER = "block13_out"   # 9x9x1024, receptive field 45 px
BAGNET77_FEATURES = 512

COMPACT_STAGES = 4
COMPACT_LOCATION_LAYER = "stage3_out"   # stride 8

_EFFICIENTNETS = {
    "efficientnet-b0": tf.keras.applications.EfficientNetB0,
    "efficientnet-b1": tf.keras.applications.EfficientNetB1,
    "efficientnet-b2": tf.keras.applications.EfficientNetB2,
    "efficientnet-b3": tf.keras.applications.EfficientNetB3,
    "efficientnet-b4": tf.keras.applications.EfficientNetB4,
}
# The output of the last block of stage 4 (stride 16); for B0 this is the 8th MBConv block.
EFFICIENTNET_LOCATION_LAYER = {
    "efficientnet-b0": "block4c_add", "efficientnet-b1": "block4d_add",
    "efficientnet-b2": "block4d_add", "efficientnet-b3": "block4e_add",
    "efficientnet-b4": "block4f_add",
}
# The output of ResNet-50's stage 4 (stride 16), for a TNet on ResNet-50.
RESNET50_LOCATION_LAYER = "conv4_block6_out"
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
_KERAS_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/{name}_notop.h5"


def build_backbone(config: BackboneConfig, input_size: Optional[int]) -> tf.keras.Model:
    """Builds the backbone named by `config` for square inputs of `input_size`.

    `input_size=None` builds a size-agnostic BagNet-77; EfficientNet needs
    a static size (Keras pads its strided convolutions by the input size).
    """
    if config.name == "compact":
        return compact_cnn(input_size, config.width, config.spatial_dropout,
                           config.location_layer or COMPACT_LOCATION_LAYER, config.norm,
                           config.norm_groups, config.convs_per_stage)
    if config.name == "bagnet77":
        return bagnet77(input_size, config.spatial_dropout, config.leaky_relu_alpha,
                        config.location_layer or BAGNET77_LOCATION_LAYER)
    if input_size is None:
        raise ValueError(f"{config.name} needs a static input_size")
    if config.name == "resnet50":
        return resnet50(input_size, config.location_layer or RESNET50_LOCATION_LAYER)
    return efficientnet(config.name, input_size, config.stochastic_depth, config.pretrained,
                        config.location_layer or EFFICIENTNET_LOCATION_LAYER[config.name])


def resnet50(input_size: int = 224,
             location_layer: str = RESNET50_LOCATION_LAYER) -> tf.keras.Model:
    """ResNet-50 v1.5 from `tf.keras.applications.ResNet50`, taking [-1, 1] images.

    Keras' ResNet-50 is v1: the first block of stages 3-5 strides in its
    first 1x1 convolution. MGNet's paper (and torchvision) use v1.5, which
    strides in the 3x3 convolution instead: 4.09 GFLOPs at 224 px instead
    of 3.86 (the paper's FF-Net: 4.104). The copy moves those strides and
    keeps every layer name and weight shape, so Keras ResNet-50 weight
    files load (weights trained as v1). The input is mapped from [-1, 1]
    to Keras' "caffe" convention (BGR, ImageNet mean subtracted) by one
    per-channel affine.
    """
    inputs = layers.Input([input_size, input_size, 3], name="image")
    caffe = CaffeInput(name="to_caffe_bgr")(inputs)
    network = tf.keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                             input_tensor=caffe)

    def clone(layer):
        config = layer.get_config()
        stage = layer.name.split("_")[0]
        if stage in ("conv3", "conv4", "conv5") and "_block1_" in layer.name:
            if layer.name.endswith("_1_conv"):
                config["strides"] = (1, 1)
            elif layer.name.endswith("_2_conv"):
                config["strides"] = (2, 2)
        return layer.__class__.from_config(config)

    network = tf.keras.models.clone_model(network, input_tensors=inputs, clone_function=clone)
    return _with_two_outputs(inputs, network.output, location_layer, "resnet50")


class CaffeInput(layers.Layer):
    """[-1, 1] RGB images to Keras' "caffe" input: BGR in [0, 255] minus the
    ImageNet channel means (`tf.keras.applications.resnet50.preprocess_input`)."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        return (inputs[..., ::-1] + 1.0) * 127.5 - tf.constant(self.MEAN_BGR, inputs.dtype)


def bagnet77(input_size: Optional[int] = 77, spatial_dropout: float = 0.0,
             alpha: float = 0.2, location_layer: str = BAGNET77_LOCATION_LAYER) -> tf.keras.Model:
    """BagNet-77 of Table 4: Leaky ReLU, no batch norm, Xavier init, zero biases.

    A ConvBlock is a ResNet bottleneck (1x1 C/4, k x k C/4 with stride and
    padding, 1x1 C); its shortcut is a strided 1x1 convolution when the
    stride or width changes, and is cropped by (k - 1) / 2 pixels per side
    when the block's padding is VALID. Leaky ReLU follows the residual sum.
    """
    inputs = layers.Input([input_size, input_size, 3], name="image")
    activation = lambda name: layers.LeakyReLU(alpha, name=name)  # noqa: E731

    x = layers.Conv2D(64, 3, padding="valid", name="stem_conv")(inputs)
    x = activation("stem_act")(x)
    for index, (kernel, channels, stride, padding) in enumerate(BAGNET77_BLOCKS, start=1):
        name = f"block{index}"
        shortcut = x
        y = layers.Conv2D(channels // 4, 1, name=f"{name}_conv1")(x)
        y = activation(f"{name}_act1")(y)
        y = layers.Conv2D(channels // 4, kernel, strides=stride, padding=padding,
                          name=f"{name}_conv2")(y)
        y = activation(f"{name}_act2")(y)
        y = layers.Conv2D(channels, 1, name=f"{name}_conv3")(y)
        if padding == "valid" and kernel > 1:
            margin = (kernel - 1) // 2
            shortcut = layers.Cropping2D(margin, name=f"{name}_crop")(shortcut)
        if stride > 1 or shortcut.shape[-1] != channels:
            shortcut = layers.Conv2D(channels, 1, strides=stride, name=f"{name}_shortcut")(shortcut)
        x = layers.Add(name=f"{name}_add")([y, shortcut])
        x = activation(f"{name}_out")(x)
    x = layers.Conv2D(BAGNET77_FEATURES, 1, name="top_conv")(x)
    x = activation("top_act")(x)
    # The authors' spatial dropout acts on the 512 channels of the last 1x1 conv
    # (after its Leaky ReLU, before pooling), not on the 2048 channels entering it.
    x = layers.SpatialDropout2D(spatial_dropout, name="top_dropout")(x)
    vector = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _with_two_outputs(inputs, vector, location_layer, "bagnet77")


class LevelBatchNormalization(layers.Layer):
    """Batch normalisation with moving statistics per TNet level.

    TNet runs its backbone once per level. In training each call is
    normalised with its own batch statistics, but a single pair of moving
    averages would mix the levels, whose inputs differ (level 1 is the whole
    image downscaled, deeper levels are crops at finer scales), and
    inference would normalise every level with the mixture (measured in
    docs/design_notes.md). This layer keeps moving statistics for each of the first
    `levels` levels (deeper ones share the last); scale and offset are
    shared. TNet sets `level` before each backbone call, in Python, so a
    traced graph holds one branch per level; outside TNet (baselines) it
    stays 1. A level that was never trained keeps the initial statistics
    (mean 0, variance 1).

    Moving averages lag the weights, and where an input has almost no
    variance a small lag shifts inference far from training;
    `training.recalibrate_batch_norm` re-estimates them with the final weights.
    """

    def __init__(self, levels: int = 3, momentum: float = 0.99, epsilon: float = 1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.levels, self.momentum, self.epsilon = levels, momentum, epsilon
        self.level = 1
        # Keras batch norm without its own scale and offset: its moving averages,
        # replica synchronisation and fused kernels, once per level.
        self.norms = [layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                                center=False, scale=False, name=f"level{i}")
                      for i in range(1, levels + 1)]

    def build(self, input_shape):
        channels = [input_shape[-1]]
        self.gamma = self.add_weight("gamma", channels, initializer="ones")
        self.beta = self.add_weight("beta", channels, initializer="zeros")
        for norm in self.norms:
            with tf.name_scope(norm.name):
                norm.build(input_shape)
        super().build(input_shape)

    @tf.autograph.experimental.do_not_convert     # plain Python: the level is read at trace
    def call(self, inputs, training=None):
        x = self.norms[min(self.level, self.levels) - 1](inputs, training=training)
        return x * tf.cast(self.gamma, x.dtype) + tf.cast(self.beta, x.dtype)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "momentum": self.momentum,
                "epsilon": self.epsilon}


def level_batch_norms(backbone: tf.keras.Model):
    """The backbone's `LevelBatchNormalization` layers."""
    return [layer for layer in backbone.layers if isinstance(layer, LevelBatchNormalization)]


def set_backbone_level(backbone: tf.keras.Model, level: int) -> None:
    """Tells the backbone's level-aware layers which TNet level the next call sees."""
    for layer in level_batch_norms(backbone):
        layer.level = level


def compact_cnn(input_size: Optional[int] = 32, width: int = 16, dropout: float = 0.0,
                location_layer: str = COMPACT_LOCATION_LAYER, norm: str = "group",
                norm_groups: int = 1,
                convs_per_stage: Sequence[int] = (2, 2, 2, 2)) -> tf.keras.Model:
    """A small CNN for CPU demos and tests: 4 stages of `width * 2**stage`
    channels, stage s a 3x3 stride-2 conv followed by `convs_per_stage[s] - 1`
    3x3 convs, every conv with normalisation and SiLU, then GAP.
    Its feature vector has `8 * width` channels; the location module reads
    the output of stage 3 (stride 8).

    norm="group" (the default): group normalisation with `norm_groups`
    groups, statistics per image. TNet runs the backbone once per level, so
    per-image statistics keep training and inference identical at every
    level and need no synchronisation between replicas.

    norm="batch": `LevelBatchNormalization`, batch normalisation with moving
    statistics per TNet level. It learns much faster on small objects
    (docs/design_notes.md); the digits demo and the learning benchmark use it.
    """
    if width < 1 or norm_groups < 1 or (norm == "group" and width % norm_groups):
        raise ValueError(f"compact backbone width must be a positive multiple of its "
                         f"norm_groups ({norm_groups}); got {width}")
    inputs = layers.Input([input_size, input_size, 3], name="image")
    x = inputs
    for stage in range(1, COMPACT_STAGES + 1):
        strides = (2,) + (1,) * (convs_per_stage[stage - 1] - 1)
        for index, stride in enumerate(strides, start=1):
            x = layers.Conv2D(width * 2 ** (stage - 1), 3, strides=stride, padding="same",
                              use_bias=False, name=f"stage{stage}_conv{index}")(x)
            if norm == "batch":
                x = LevelBatchNormalization(name=f"stage{stage}_bn{index}")(x)
            else:
                x = layers.GroupNormalization(norm_groups, name=f"stage{stage}_gn{index}")(x)
            x = layers.Activation("swish", name=f"stage{stage}_out" if index == len(strides)
                                  else f"stage{stage}_act{index}")(x)
    x = layers.SpatialDropout2D(dropout, name="top_dropout")(x)
    vector = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _with_two_outputs(inputs, vector, location_layer, "compact")


def efficientnet(name: str, input_size: int, stochastic_depth: float = 0.0,
                 pretrained: Optional[str] = None,
                 location_layer: Optional[str] = None) -> tf.keras.Model:
    """A `tf.keras.applications` EfficientNet taking [-1, 1] images.

    Keras EfficientNets rescale [0, 255] inputs internally, so the images
    are mapped to [0, 255] first. `pretrained` is None, "imagenet" or the
    path of a Keras weight file; with ImageNet weights the input
    normalisation is set to the ImageNet mean and variance, which is what
    the weights were trained with (the Keras weight files store the standard
    deviation in the variance slot, which Keras only corrects for
    `weights="imagenet"`).
    """
    if name not in _EFFICIENTNETS:
        raise ValueError(f"unknown EfficientNet {name!r}; choose one of {', '.join(_EFFICIENTNETS)}")
    inputs = layers.Input([input_size, input_size, 3], name="image")
    x = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(inputs)
    network = _EFFICIENTNETS[name](include_top=False, weights=None, input_tensor=x,
                                   pooling="avg", drop_connect_rate=stochastic_depth)
    if pretrained is not None:
        network.load_weights(weights_path(name, pretrained))
        normalization = next(l for l in network.layers if isinstance(l, layers.Normalization))
        normalization.set_weights([np.array(IMAGENET_MEAN_RGB, np.float32),
                                   np.square(np.array(IMAGENET_STDDEV_RGB, np.float32)),
                                   normalization.get_weights()[2]])
        normalization.finalize_state()
    network = for_fast_inference(network, inputs)
    return _with_two_outputs(inputs, network.output,
                             location_layer or EFFICIENTNET_LOCATION_LAYER[name], name)


def for_fast_inference(network: tf.keras.Model, inputs) -> tf.keras.Model:
    """A copy of a keras.applications network, applied to `inputs`, with the
    same layers, names and weights, that infers like a hand-written one:

    - every explicit `ZeroPadding2D` + VALID strided convolution becomes an
      `Identity` + SAME convolution. keras.applications pads by
      `correct_pad`, (k // 2 - 1, k // 2) on even sides and (k // 2, k // 2)
      on odd ones, which is what SAME padding does for an odd kernel k at
      stride 2: the outputs are identical (tested at even and odd sizes);
    - every convolution whose only consumer is a batch norm becomes a
      `FoldingConv2D` / `FoldingDepthwiseConv2D`: at inference it convolves
      with the kernel scaled by the norm's gamma / sqrt(variance + eps) and
      adds beta - mean * that factor, and the norm passes its input through
      (12 % of EfficientNet-B0's inference time here). Training is untouched;
    - the `Rescaling` layers in front of the input `Normalization` become
      `Identity`, and the normalization an `InputAffineNormalization` that
      applies them and itself as one per-channel affine (three passes over
      the input image were 0.5 ms of EfficientNet-B0's 10 ms per image here).

    Keras weight files (by layer name) and our checkpoints (by layer order)
    load as before: no layer or weight is added, removed or reordered.
    """
    padded = {layer.name for layer in network.layers
              if isinstance(layer, layers.ZeroPadding2D)}
    convs = (layers.Conv2D, layers.DepthwiseConv2D)
    same = {layer.name for layer in network.layers if isinstance(layer, convs)
            and getattr(layer.inbound_nodes[0].inbound_layers, "name", None) in padded}
    folded = {}    # conv name -> batch norm name
    for layer in network.layers:
        consumers = [node.outbound_layer for node in layer.outbound_nodes]
        if (isinstance(layer, convs) and not layer.use_bias and len(consumers) == 1
                and layer.activation is tf.keras.activations.linear
                and type(consumers[0]) is layers.BatchNormalization):
            folded[layer.name] = consumers[0].name

    prefixes = {}   # input normalization name -> (scale, offset) of the rescalings before it
    for layer in network.layers:
        chain = _rescalings_before(layer)
        if chain:
            scale, offset = 1.0, 0.0
            for rescaling in chain:
                scale, offset = scale * rescaling.scale, offset * rescaling.scale + rescaling.offset
            prefixes[layer.name] = (scale, offset)
            padded.update(rescaling.name for rescaling in chain)    # -> Identity

    def clone(layer):
        if layer.name in padded:
            return layers.Identity(name=layer.name)
        config = layer.get_config()
        if layer.name in prefixes:
            scale, offset = prefixes[layer.name]
            return InputAffineNormalization.from_config(
                {**config, "prefix_scale": scale, "prefix_offset": offset})
        if layer.name in same:
            config["padding"] = "same"
        if layer.name in folded:
            return _FOLDING[type(layer)].from_config(config)
        if layer.name in folded.values():
            return FoldedBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    copy = tf.keras.models.clone_model(network, input_tensors=inputs, clone_function=clone)
    copy.set_weights(network.get_weights())
    for conv, norm in folded.items():
        # Plain attributes, not tracked sublayers: each weight stays in one layer.
        object.__setattr__(copy.get_layer(conv), "norm", copy.get_layer(norm))
        object.__setattr__(copy.get_layer(norm), "folded_by", copy.get_layer(conv))
    for layer in copy.layers:
        if isinstance(layer, layers.Normalization):
            layer.finalize_state()     # its mean and variance tensors follow the weights
    return copy


def _rescalings_before(layer) -> list:
    """The chain of scalar `Rescaling` layers that alone feed `layer`, an input
    `Normalization` (with mean and variance weights), in the order they apply."""
    if not (type(layer) is layers.Normalization and layer.input_mean is None
            and not layer.invert):
        return []
    chain = []
    source = layer.inbound_nodes[0].inbound_layers
    while (isinstance(source, layers.Rescaling) and len(source.outbound_nodes) == 1
           and all(isinstance(v, (int, float)) for v in (source.scale, source.offset))):
        chain.append(source)
        source = source.inbound_nodes[0].inbound_layers
    return chain[::-1]


class InputAffineNormalization(layers.Normalization):
    """Keras' input `Normalization` applying the rescalings before it as well
    (`for_fast_inference` turns those into `Identity`): x * prefix_scale +
    prefix_offset, then (- mean) / sqrt(variance), as one per-channel affine
    (a multiplication and a bias: no convolution, so eq.-11 FLOPs stay Keras'),
    in training and inference alike. It reads its mean and variance weights
    at every call."""

    def __init__(self, prefix_scale: float = 1.0, prefix_offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.prefix_scale, self.prefix_offset = float(prefix_scale), float(prefix_offset)

    def call(self, inputs):
        inputs = tf.cast(inputs, self.compute_dtype)
        deviation = tf.maximum(tf.sqrt(self.adapt_variance), tf.keras.backend.epsilon())
        scale = self.prefix_scale / deviation
        offset = (self.prefix_offset - self.adapt_mean) / deviation
        return tf.nn.bias_add(inputs * tf.cast(scale, inputs.dtype), tf.cast(offset, inputs.dtype))

    def get_config(self):
        return {**super().get_config(), "prefix_scale": self.prefix_scale,
                "prefix_offset": self.prefix_offset}


def _inference(training) -> bool:
    return training is None or (isinstance(training, (bool, int)) and not training)


class FoldedBatchNormalization(layers.BatchNormalization):
    """Batch norm whose inference the convolution before it does
    (`for_fast_inference`): at inference it passes its input through."""

    folded_by = None   # the folding convolution, linked by for_fast_inference

    def call(self, inputs, training=None):
        if self.folded_by is not None and _inference(training):
            return inputs
        return super().call(inputs, training=training)


class _Folding:
    """At inference, convolves with the batch norm `norm` folded in."""

    norm = None   # the FoldedBatchNormalization after this layer

    def call(self, inputs, training=None):
        if self.norm is None or not _inference(training):
            return super().call(inputs)
        norm = self.norm
        factor = tf.math.rsqrt(norm.moving_variance + norm.epsilon)
        if norm.scale:
            factor *= norm.gamma
        offset = -norm.moving_mean * factor
        if norm.center:
            offset += norm.beta
        kernel = tf.convert_to_tensor(self.folding_kernel())   # in the compute dtype
        outputs = self.convolve(inputs, kernel * tf.cast(tf.reshape(factor, self.factor_shape),
                                                         kernel.dtype))
        return tf.nn.bias_add(outputs, tf.cast(offset, outputs.dtype))


class FoldingConv2D(_Folding, layers.Conv2D):
    factor_shape = (1, 1, 1, -1)      # kernel [k, k, in, out]

    def folding_kernel(self):
        return self.kernel

    def convolve(self, inputs, kernel):
        return self.convolution_op(inputs, kernel)


class FoldingDepthwiseConv2D(_Folding, layers.DepthwiseConv2D):
    factor_shape = (1, 1, -1, 1)      # kernel [k, k, channels, 1]

    def folding_kernel(self):
        return self.depthwise_kernel

    def convolve(self, inputs, kernel):
        return tf.nn.depthwise_conv2d(inputs, kernel, (1, *self.strides, 1),
                                      self.padding.upper(), dilations=self.dilation_rate)


_FOLDING = {layers.Conv2D: FoldingConv2D, layers.DepthwiseConv2D: FoldingDepthwiseConv2D}


def weights_path(name: str, pretrained: str) -> str:
    """The local weight file for `pretrained` ("imagenet" downloads the Keras file)."""
    if pretrained != "imagenet":
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
        return pretrained
    file_name = name.replace("-", "")
    try:
        return tf.keras.utils.get_file(f"{file_name}_notop.h5",
                                       _KERAS_WEIGHTS_URL.format(name=file_name),
                                       cache_subdir="models")
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise RuntimeError(
            f"could not download the ImageNet weights of {name} ({error}); without internet, "
            f"pass the path of a Keras weight file ({file_name}_notop.h5) instead") from error


def _with_two_outputs(inputs, vector, location_layer: str, name: str) -> tf.keras.Model:
    graph = tf.keras.Model(inputs, vector)
    try:
        feature_map = graph.get_layer(location_layer).output
    except ValueError as error:
        raise ValueError(f"location_layer {location_layer!r} is not a layer of {name}") from error
    return tf.keras.Model(inputs, [feature_map, vector], name=name.replace("-", "_"))
