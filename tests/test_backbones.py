"""Backbones: BagNet-77 as Table 4, EfficientNet from keras.applications."""
import numpy as np
import pytest
import tensorflow as tf

from tnet_tf import backbones
from tnet_tf.config import BackboneConfig


def test_bagnet77_endpoints_params_and_initialisation():
    model = backbones.bagnet77(77, spatial_dropout=0.5)
    feature_map, vector = model.outputs
    assert tuple(feature_map.shape) == (None, 9, 9, 1024)
    assert tuple(vector.shape) == (None, 512)
    # Table 4 backbone + FC-1000 = 20,546,664 parameters (replication.md).
    assert model.count_params() + 512 * 1000 + 1000 == 20_546_664
    layer_types = {type(layer) for layer in model.layers}
    assert tf.keras.layers.BatchNormalization not in layer_types
    assert tf.keras.layers.SpatialDropout2D in layer_types
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert all(isinstance(c.kernel_initializer, tf.keras.initializers.GlorotUniform) for c in convs)
    assert all(not np.any(c.bias.numpy()) for c in convs)
    assert all(isinstance(layer, tf.keras.layers.LeakyReLU) for layer in model.layers
               if layer.name.endswith("_out"))


def test_bagnet77_spatial_dropout_drops_the_512_output_channels():
    # The authors drop channels of the last 1x1 conv's output (after its Leaky
    # ReLU): in training whole channels of the pooled vector are exactly zero.
    model = backbones.bagnet77(77, spatial_dropout=0.5)
    dropout = model.get_layer("top_dropout")
    assert dropout.input.shape[-1] == 512 and dropout.input.node.layer.name == "top_act"
    images = tf.random.stateless_uniform([4, 77, 77, 3], seed=[1, 2], minval=-1, maxval=1)
    tf.keras.utils.set_random_seed(0)
    _, vector = model(images, training=True)
    dropped = np.mean(vector.numpy() == 0.0, axis=1)
    assert np.all((dropped > 0.35) & (dropped < 0.65)), dropped
    _, inference = model(images, training=False)
    assert not np.any(inference.numpy() == 0.0)


def test_bagnet77_is_fully_convolutional_at_224():
    model = backbones.bagnet77(224)
    feature_map, vector = model(tf.zeros([1, 224, 224, 3]))
    assert vector.shape == (1, 512)
    assert feature_map.shape[1] > 9


@pytest.mark.parametrize("name, channels, blocks, last_residual",
                         [("efficientnet-b0", 80, 16, 14), ("efficientnet-b2", 88, 23, 22)])
def test_efficientnet_taps_stage4_output(name, channels, blocks, last_residual):
    model = backbones.efficientnet(name, 224, stochastic_depth=0.3)
    feature_map, vector = model.outputs
    assert tuple(feature_map.shape) == (None, 14, 14, channels)
    assert feature_map.node.layer.name == backbones.EFFICIENTNET_LOCATION_LAYER[name]
    rates = [layer.rate for layer in model.layers
             if isinstance(layer, tf.keras.layers.Dropout) and "drop" in layer.name]
    # Keras' linear schedule: block b of B drops with 0.3 * b / B (blocks without a residual
    # connection have no stochastic depth).
    assert rates == sorted(rates)
    assert max(rates) == pytest.approx(0.3 * last_residual / blocks)


def test_efficientnet_b0_8th_mbconv_block_is_the_tap():
    model = backbones.efficientnet("efficientnet-b0", 224)
    block_names = sorted({layer.name.split("_")[0] for layer in model.layers
                          if layer.name.startswith("block")})
    assert block_names[7] == "block4c"
    assert model.outputs[0].node.layer.name == "block4c_add"


def test_pretrained_weight_file_loads_and_sees_imagenet_normalised_input(tmp_path):
    reference = tf.keras.applications.EfficientNetB0(include_top=False, weights=None,
                                                     input_shape=(64, 64, 3), pooling="avg")
    path = str(tmp_path / "efficientnetb0_notop.h5")
    reference.save_weights(path)

    model = backbones.efficientnet("efficientnet-b0", 64, pretrained=path)
    images = tf.random.uniform([2, 64, 64, 3], -1.0, 1.0)
    # The weights arrived: every conv kernel equals the reference's.
    ours = {l.name: l.get_weights() for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)}
    for layer in reference.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            np.testing.assert_array_equal(ours[layer.name][0], layer.get_weights()[0])
    # The network sees (pixel / 255 - mean) / std of the [0, 255] image.
    normalization = next(l for l in model.layers if isinstance(l, tf.keras.layers.Normalization))
    probe = tf.keras.Model(model.inputs, normalization.output)
    pixels = (images.numpy() + 1.0) * 127.5
    expected = (pixels / 255.0 - np.array(backbones.IMAGENET_MEAN_RGB)) / np.array(
        backbones.IMAGENET_STDDEV_RGB)
    np.testing.assert_allclose(probe(images).numpy(), expected, atol=1e-4)
    # And with the same normalisation, its features equal the reference network's.
    reference_norm = next(l for l in reference.layers
                          if isinstance(l, tf.keras.layers.Normalization))
    reference_norm.set_weights(normalization.get_weights())
    reference_norm.finalize_state()
    np.testing.assert_allclose(model(images)[1].numpy(), reference(pixels).numpy(), atol=1e-4)


@pytest.mark.parametrize("size", [64, 65])
def test_efficientnet_with_same_padding_computes_what_keras_applications_does(size):
    # Our EfficientNet replaces keras.applications' explicit ZeroPadding2D +
    # VALID strided convolutions by SAME convolutions and folds batch norm into
    # the convolutions at inference: the same outputs at even and odd sizes, in
    # training and inference, with the same layers, names and weights.
    model = backbones.efficientnet("efficientnet-b0", size)
    tf.keras.backend.clear_session()     # the same layer names in the reference
    inputs = tf.keras.layers.Input([size, size, 3])
    x = tf.keras.layers.Rescaling(127.5, offset=127.5, name="to_0_255")(inputs)
    keras_network = tf.keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_tensor=x, pooling="avg", drop_connect_rate=0.0)
    reference = tf.keras.Model(inputs, [keras_network.get_layer("block4c_add").output,
                                        keras_network.output])
    weighted = [layer for layer in reference.layers if layer.weights]
    assert sorted(l.name for l in model.layers if l.weights) == sorted(l.name for l in weighted)
    rng = np.random.default_rng(0)
    for layer in weighted:
        weights = model.get_layer(layer.name).get_weights()
        if isinstance(layer, tf.keras.layers.BatchNormalization):   # statistics that show
            weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in weights]
            model.get_layer(layer.name).set_weights(weights)
        layer.set_weights(weights)
    padded = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.ZeroPadding2D)]
    strided = [layer for layer in model.layers
               if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D))
               and layer.strides == (2, 2)]
    assert not padded and len(strided) == 5 and all(l.padding == "same" for l in strided)
    # The input rescalings and normalization are one affine.
    assert not [l for l in model.layers if isinstance(l, tf.keras.layers.Rescaling)]
    assert [type(l) for l in model.layers if isinstance(l, tf.keras.layers.Normalization)] == \
        [backbones.InputAffineNormalization]
    folded = [l for l in model.layers if isinstance(l, backbones.FoldedBatchNormalization)]
    assert len(folded) == 49 and all(l.folded_by.norm is l for l in folded)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    for training in (False, True):
        for ours, theirs in zip(model(images, training=training),
                                reference(images, training=training)):
            assert ours.shape == theirs.shape
            scale = np.abs(theirs.numpy()).max()
            np.testing.assert_allclose(ours.numpy() / scale, theirs.numpy() / scale, atol=1e-4)
    # Training updated the moving statistics of both alike.
    np.testing.assert_allclose(model.get_layer("top_bn").moving_mean.numpy(),
                               reference.get_layer("top_bn").moving_mean.numpy(), atol=1e-5)


def test_folded_efficientnet_runs_under_mixed_precision():
    images = tf.random.uniform([2, 64, 64, 3], -1.0, 1.0, seed=2)
    model = backbones.efficientnet("efficientnet-b0", 64)
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = backbones.efficientnet("efficientnet-b0", 64)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(model.get_weights())
    expected, got = model(images)[1].numpy(), mixed(images)[1]
    assert got.dtype == tf.bfloat16
    assert np.abs(got.numpy().astype(np.float32) - expected).max() < 0.05 * np.abs(expected).max()


def test_missing_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        backbones.efficientnet("efficientnet-b0", 64, pretrained=str(tmp_path / "no_such.h5"))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="backbone.name"):
        BackboneConfig(name="resnet18")
    with pytest.raises(ValueError, match="backbone.pretrained"):
        BackboneConfig(name="bagnet77", pretrained="imagenet")


def test_resnet50_is_v1_5_with_keras_names_and_caffe_input():
    model = backbones.build_backbone(BackboneConfig(name="resnet50"), 64)
    keras = tf.keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                           input_shape=(64, 64, 3))
    ours = {w.name: w.shape for w in model.weights}
    assert ours == {w.name: w.shape for w in keras.weights}      # Keras weight files load
    strides = {layer.name: layer.strides[0] for layer in model.layers
               if isinstance(layer, tf.keras.layers.Conv2D)}
    for stage in (3, 4, 5):                                     # the 3x3 conv strides (v1.5)
        assert (strides[f"conv{stage}_block1_1_conv"], strides[f"conv{stage}_block1_2_conv"]) \
            == (1, 2)
    assert tuple(model.outputs[0].shape) == (None, 4, 4, 1024)  # stage 4, stride 16
    # The input: [-1, 1] RGB -> Keras' caffe convention, as resnet50.preprocess_input.
    images = tf.random.stateless_uniform([2, 8, 8, 3], [0, 1], -1.0, 1.0)
    expected = tf.keras.applications.resnet50.preprocess_input((images + 1.0) * 127.5)
    np.testing.assert_allclose(backbones.CaffeInput()(images), expected, atol=1e-4)


def test_compact_backbone_taps_stride_8():
    model = backbones.build_backbone(BackboneConfig(name="compact", width=8), 64)
    feature_map, vector = model.outputs
    assert tuple(feature_map.shape) == (None, 8, 8, 32)
    assert tuple(vector.shape) == (None, 64)


def test_compact_convs_per_stage_sets_the_convs_of_each_stage():
    config = BackboneConfig(name="compact", width=8, convs_per_stage=[1, 2, 3, 1])
    assert config.convs_per_stage == (1, 2, 3, 1)       # lists from JSON become tuples
    model = backbones.build_backbone(config, 64)
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert [c.name for c in convs] == ["stage1_conv1", "stage2_conv1", "stage2_conv2",
                                       "stage3_conv1", "stage3_conv2", "stage3_conv3",
                                       "stage4_conv1"]
    assert [c.strides[0] for c in convs] == [2, 2, 1, 2, 1, 1, 2]
    # The location layer is still each stage's last activation, at stride 8.
    assert model.get_layer("stage3_out").input is model.get_layer("stage3_gn3").output
    feature_map, vector = model.outputs
    assert tuple(feature_map.shape) == (None, 8, 8, 32) and tuple(vector.shape) == (None, 64)
    for bad in [(2, 2, 2), (0, 2, 2, 2)]:
        with pytest.raises(ValueError, match="backbone.convs_per_stage"):
            BackboneConfig(name="compact", convs_per_stage=bad)


@pytest.mark.parametrize("norm, per_image", [("group", True), ("batch", False)])
def test_compact_norm_decides_whether_training_features_depend_on_the_batch(norm, per_image):
    model = backbones.build_backbone(BackboneConfig(name="compact", width=8, norm=norm), 32)
    layer_types = {type(layer).__name__ for layer in model.layers}
    assert ("LevelBatchNormalization" in layer_types) == (norm == "batch")
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=(1, 2), minval=-1, maxval=1)
    alone = model(images[:1], training=True)[1]
    in_batch = model(images, training=True)[1][:1]
    assert np.allclose(alone, in_batch, atol=1e-5) == per_image
    # In inference both are per image.
    np.testing.assert_allclose(model(images[:1])[1], model(images)[1][:1], atol=1e-5)


def test_compact_norm_errors_name_the_field():
    with pytest.raises(ValueError, match="backbone.norm"):
        BackboneConfig(name="compact", norm="layer")
    with pytest.raises(ValueError, match="norm_groups"):
        backbones.compact_cnn(32, width=6, norm_groups=4)
