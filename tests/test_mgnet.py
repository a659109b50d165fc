"""MGNet: glimpse geometry, the gradient into the localization network,
the fusion of eq. (3), early exit, the loss of eqs. (6)-(8) and `fit`."""
import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import losses, mgnet
from tnet_tf.config import BackboneConfig


def tiny_config(**overrides):
    fields = dict(num_classes=5, backbone=BackboneConfig(name="compact", width=8),
                  input_size=64, glimpse_size=32, glimpses=3)
    fields.update(overrides)
    return tnet_tf.MGNetConfig(**fields)


def random_images(batch=3, size=64, seed=0):
    return tf.random.stateless_uniform([batch, size, size, 3], [seed, 1], -1.0, 1.0)


def test_regions_and_boxes_by_hand():
    unit = tf.constant([[0.5, 1.0, 0.0], [0.0, 0.5, 0.25], [1.0, 0.0, 1.0]])
    regions = mgnet.regions_from_unit(unit, 0.2, 0.5).numpy()
    # a_s = 0.2 + 0.3 u_s; a_x = (2 u_x - 1)(1 - a_s)
    np.testing.assert_allclose(regions, [[0.35, 0.65, -0.65], [0.2, 0.0, -0.4],
                                         [0.5, -0.5, 0.5]], atol=1e-6)
    boxes = mgnet.region_boxes(regions).numpy()
    # [y1, x1, y2, x2] = ((y - s + 1) / 2, (x - s + 1) / 2, (y + s + 1) / 2, (x + s + 1) / 2)
    np.testing.assert_allclose(boxes[0], [0.0, 0.65, 0.35, 1.0], atol=1e-6)
    np.testing.assert_allclose(boxes[1], [0.2, 0.4, 0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(boxes[2], [0.5, 0.0, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(mgnet.region_boxes(tf.constant(mgnet.IDENTITY_REGION)),
                               [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(mgnet.affine_matrices(tf.constant([[0.35, 0.65, -0.65]])),
                               [[0.35, 0.0, 0.65, 0.0, 0.35, -0.65]], atol=1e-7)


def test_regions_cover_the_ranges_and_stay_inside():
    grid = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    unit = tf.constant(np.stack(np.meshgrid(grid, grid, grid), -1).reshape(-1, 3))
    regions = mgnet.regions_from_unit(unit, 0.2, 0.5).numpy()
    scale = regions[:, 0]
    assert scale.min() == pytest.approx(0.2) and scale.max() == pytest.approx(0.5)
    # The translation reaches both bounds a_s - 1 and 1 - a_s.
    np.testing.assert_allclose(np.abs(regions[:, 1:]).max(axis=0), 0.8, atol=1e-6)
    assert np.all(np.abs(regions[:, 1:]) <= 1.0 - scale[:, None] + 1e-6)
    boxes = mgnet.region_boxes(regions).numpy()
    assert boxes.min() >= -1e-6 and boxes.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], scale, atol=1e-6)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], scale, atol=1e-6)


def test_model_glimpses_first_the_whole_image_then_regions_inside_it():
    config = tiny_config(glimpses=4)
    model = tnet_tf.MGNet(config)
    images = random_images()
    outputs = model(images, training=False)
    regions = outputs["regions"].numpy()
    np.testing.assert_array_equal(regions[:, 0], np.tile(mgnet.IDENTITY_REGION, (3, 1)))
    np.testing.assert_array_equal(outputs["boxes"][0].numpy(), np.tile([[[0, 0, 1, 1]]], (3, 1, 1)))
    # The identity glimpse is the image resized (a second path: tf.image.resize).
    resized = tf.image.resize(images, [config.glimpse_size] * 2)
    np.testing.assert_allclose(outputs["features"][:, 0], model.backbone(resized)[1],
                               atol=1e-4)
    later = regions[:, 1:]
    assert np.all((later[..., 0] >= 0.2 - 1e-6) & (later[..., 0] <= 0.5 + 1e-6))
    assert np.all(np.abs(later[..., 1:]) <= 1.0 - later[..., :1] + 1e-6)
    boxes = np.concatenate([b.numpy() for b in outputs["boxes"]], axis=1)
    assert boxes.shape == (3, 4, 4) and boxes.min() >= 0.0 and boxes.max() <= 1.0


def _bilinear(image, rows, cols):
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c0 + 1] * fc
    bottom = image[r0 + 1][:, c0] * (1 - fc) + image[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def test_oracle_regions_are_centred_on_the_boxes_and_replace_the_localization():
    boxes = tf.constant([[[0.40625, 0.2, 0.46875, 0.3], [0.0, 0.9, 0.1, 1.0]]])   # y1, x1, y2, x2
    regions = mgnet.regions_around(boxes, 0.25).numpy()
    # Centre (x1 + x2 - 1, y1 + y2 - 1) in [-1, 1]; the corner box is moved inside.
    np.testing.assert_allclose(regions, [[[0.25, -0.5, -0.125], [0.25, 0.75, -0.75]]], atol=1e-6)
    framed = mgnet.region_boxes(regions).numpy()
    assert np.all(framed[..., :2] <= boxes.numpy()[..., :2] + 1e-6)
    assert np.all(framed[..., 2:] >= boxes.numpy()[..., 2:] - 1e-6)

    config = tiny_config(glimpses=3)
    model = tnet_tf.MGNet(config)
    images = random_images(batch=1)
    outputs = model(images, training=False, regions=regions)
    np.testing.assert_allclose(outputs["regions"][:, 1:], regions, atol=1e-7)
    # The second glimpse is pixels 20:36 x 8:24 of the 64 px image, sampled by hand:
    # output pixel i reads source coordinate start - 0.25 + i / 2 (half-pixel centres).
    np.testing.assert_allclose(framed[0, 0] * 64, [20, 8, 36, 24], atol=1e-5)
    crop = _bilinear(images.numpy()[0], 20 - 0.25 + np.arange(32) / 2,
                     8 - 0.25 + np.arange(32) / 2)[None]
    mgnet.set_backbone_level(model.backbone, 2)
    np.testing.assert_allclose(outputs["features"][:, 1], model.backbone(crop)[1], atol=1e-4)
    labels = tf.constant([1])
    model.compile(tf.keras.optimizers.Adam(1e-3))
    history = model.fit((images, regions), labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ValueError, match=r"regions must be \[batch, >= 2, 3\]"):
        model(images, regions=regions[:, :1])


def test_scale_gradient_scales_only_the_gradient():
    x = tf.constant([1.0, -2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = mgnet.scale_gradient(x, 0.02)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_allclose(tape.gradient(loss, x), [0.02, 0.04, 0.06], rtol=1e-6)


def test_gradient_reaches_the_localization_network_scaled_by_s():
    images = random_images()
    gradients = {}
    reference = None
    for scale in (1.0, 0.02):
        model = tnet_tf.MGNet(tiny_config(gradient_scale=scale))
        model(images)
        if reference is None:
            reference = model.get_weights()
        model.set_weights(reference)
        with tf.GradientTape() as tape:
            outputs = model(images, training=False)
            # Glimpse 2's feature depends on the localization network only through
            # its region, hence through crop_and_resize's boxes.
            loss = tf.reduce_sum(outputs["features"][:, 1] ** 2)
        gradients[scale] = tape.gradient(loss, model.localization.kernel).numpy()
    assert np.abs(gradients[1.0]).max() > 1e-6
    np.testing.assert_allclose(gradients[0.02], 0.02 * gradients[1.0], rtol=1e-4, atol=1e-9)


def test_fusion_is_eq3_by_hand():
    fusion = mgnet.FeatureFusion(name="fusion")
    tokens = tf.random.stateless_normal([2, 3, 6], [3, 4])
    fused = fusion(tokens).numpy()
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (
        layer.get_weights() for layer in (fusion.query, fusion.key, fusion.value,
                                          fusion.output_projection))
    gamma, beta = fusion.norm.get_weights()
    h = tokens.numpy()
    q, k, v = h @ wq + bq, h @ wk + bk, h @ wv + bv
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(6)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = (weights @ v) @ wo + bo
    last = mixed[:, -1]
    normed = (last - last.mean(-1, keepdims=True)) / np.sqrt(last.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(fused, np.maximum(normed * gamma + beta, 0.0), atol=1e-5)


def test_early_exit_equals_the_first_steps_of_a_longer_run():
    model = tnet_tf.MGNet(tiny_config(glimpses=4))
    images = random_images()
    full = model(images, training=False)
    assert full["step_logits"].shape == (3, 4, 5) and "glimpse_logits" not in full
    np.testing.assert_array_equal(full["logits"], full["step_logits"][:, -1])
    for steps in (1, 2, 3):
        early = model(images, glimpses=steps, training=False)
        assert early["step_logits"].shape == (3, steps, 5) and len(early["boxes"]) == steps
        np.testing.assert_allclose(early["step_logits"], full["step_logits"][:, :steps],
                                   atol=1e-5)
        np.testing.assert_allclose(early["logits"], full["step_logits"][:, steps - 1], atol=1e-5)
    assert model(images, training=True)["glimpse_logits"].shape == (3, 4, 5)
    with pytest.raises(ValueError, match="glimpses must be a whole number >= 1"):
        model(images, glimpses=0)


def test_loss_is_eqs_6_to_8_by_hand():
    rng = np.random.default_rng(0)
    step_logits, glimpse_logits = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    labels = np.array([1, 4, 0, 2])
    terms = losses.mgnet_loss(step_logits, glimpse_logits, labels, 0.6)

    def cross_entropy(logits):   # [B, T, C] -> mean over T of -log softmax at the label
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -log_probs[np.arange(4), :, labels].mean(axis=1)
    np.testing.assert_allclose(terms["global"], cross_entropy(step_logits), rtol=1e-5)
    np.testing.assert_allclose(terms["glimpse"], cross_entropy(glimpse_logits), rtol=1e-5)
    np.testing.assert_allclose(terms["total"], 0.6 * cross_entropy(glimpse_logits)
                               + 0.4 * cross_entropy(step_logits), rtol=1e-5)


def test_fit_trains_every_part():
    tf.keras.utils.set_random_seed(0)
    model = tnet_tf.MGNet(tiny_config())
    images = random_images(batch=16)
    labels = tf.constant(np.arange(16) % 5)
    model(images)
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    model.compile(tf.keras.optimizers.Adam(1e-3), weight_decay=1e-4)
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert set(history.history) == {"loss", "global_loss", "glimpse_loss", "weight_decay",
                                    "top1", "top5"}
    assert np.all(np.isfinite(history.history["loss"]))
    changed = {v.name for v in model.trainable_variables
               if not np.allclose(before[v.name], v.numpy())}
    for part in ("localization", "fusion", "classifier", "glimpse_classifier", "stage1_conv1"):
        assert any(part in name for name in changed), (part, sorted(changed))
    results = model.evaluate(images, labels, batch_size=8, return_dict=True, verbose=0)
    assert 0.0 <= results["top1"] <= 1.0 and np.isfinite(results["loss"])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="min_scale"):
        tiny_config(min_scale=0.6, max_scale=0.5)
    with pytest.raises(ValueError, match="glimpse_size"):
        tiny_config(glimpse_size=128)
    config = tnet_tf.MGNetConfig.from_tnet(tnet_tf.get_preset("digits"), glimpses=3)
    assert (config.glimpse_size, config.input_size, config.num_classes, config.glimpses) == \
        (64, 128, 10, 3)
    assert tnet_tf.MGNetConfig.from_dict(config.to_dict()) == config
