"""EfficientNet-B0 written out for inference, the reference that
`experiments.benchmark` times our keras.applications EfficientNet against:
'same' padding, every batch norm folded into its convolution, one input
affine. `fold_weights` fills it from one of our EN-B0 backbones."""
from __future__ import annotations

B0_BLOCKS = (   # (kernel, repeats, filters in, filters out, expansion, stride) per stage
    (3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1),
)


def handwritten_efficientnet_b0(input_size: int, location_layer: str = "block4c_add"):
    """EfficientNet-B0 written out for inference: 'same' padding, every batch
    norm folded into its convolution (a bias), one per-channel affine on the
    input; [feature map, pooled vector] like our backbones. Its layers carry
    the keras.applications names of the convolutions; `fold_weights` fills
    them from a Keras EN-B0."""
    import tensorflow as tf
    layers = tf.keras.layers
    inputs = layers.Input([input_size, input_size, 3])
    x = layers.DepthwiseConv2D(1, name="input_affine")(inputs)    # scale and offset per channel
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="swish", name="stem_conv")(x)
    for stage, (kernel, repeats, filters_in, filters_out, expand, stride) in enumerate(B0_BLOCKS):
        for repeat in range(repeats):
            name = f"block{stage + 1}{chr(ord('a') + repeat)}_"
            width_in = filters_in if repeat == 0 else filters_out
            strides = stride if repeat == 0 else 1
            y = x
            if expand != 1:
                y = layers.Conv2D(width_in * expand, 1, activation="swish",
                                  name=name + "expand_conv")(y)
            y = layers.DepthwiseConv2D(kernel, strides=strides, padding="same",
                                       activation="swish", name=name + "dwconv")(y)
            se = layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_squeeze")(y)
            se = layers.Conv2D(max(1, int(width_in * 0.25)), 1, activation="swish",
                               name=name + "se_reduce")(se)
            se = layers.Conv2D(width_in * expand, 1, activation="sigmoid",
                               name=name + "se_expand")(se)
            y = layers.Multiply(name=name + "se_excite")([y, se])
            y = layers.Conv2D(filters_out, 1, name=name + "project_conv")(y)
            if strides == 1 and width_in == filters_out:
                y = layers.Add(name=name + "add")([y, x])
            x = y
    x = layers.Conv2D(1280, 1, activation="swish", name="top_conv")(x)
    vector = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = tf.keras.Model(inputs, vector)
    feature_map = model.get_layer(location_layer).output
    return tf.keras.Model(inputs, [feature_map, vector], name="handwritten_efficientnet_b0")


def fold_weights(handwritten, keras_backbone) -> None:
    """Copies a Keras EN-B0 backbone (ours) into the hand-written one: each
    convolution's kernel times its batch norm's scale / sqrt(variance + eps),
    bias = offset - mean * that factor; the input layers become one affine."""
    import numpy as np
    import tensorflow as tf
    source = {layer.name: layer for layer in _flat_layers(keras_backbone)}
    for layer in handwritten.layers:
        if layer.name == "input_affine":
            # Rescaling and normalization are affine per channel: read them off.
            stem = source["stem_conv"]
            prefix = tf.keras.Model(keras_backbone.inputs, stem.input)
            shape = [1, *keras_backbone.input_shape[1:]]
            zero, one = (prefix(tf.fill(shape, v))[0, 0, 0].numpy() for v in (0.0, 1.0))
            layer.set_weights([(one - zero).reshape(1, 1, 3, 1), zero])
            continue
        if not layer.weights:
            continue
        conv = source[layer.name]
        weights = conv.get_weights()
        if layer.name.endswith("se_reduce") or layer.name.endswith("se_expand"):
            layer.set_weights(weights)
            continue
        norm = source[_batch_norm_of(layer.name)]
        gamma, beta, mean, variance = norm.get_weights()
        factor = gamma / np.sqrt(variance + norm.epsilon)
        kernel = weights[0]
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            kernel = kernel * factor.reshape(1, 1, -1, 1)
        else:
            kernel = kernel * factor
        layer.set_weights([kernel, beta - mean * factor])


def _batch_norm_of(conv: str) -> str:
    # stem_conv -> stem_bn, blockNx_dwconv -> blockNx_bn, blockNx_expand_conv -> blockNx_expand_bn
    return conv.replace("dwconv", "bn") if conv.endswith("dwconv") else conv.replace("conv", "bn")


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _flat_layers(layer)
        else:
            yield layer
