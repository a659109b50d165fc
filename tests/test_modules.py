"""Location, positional-encoding, classification and feature-weighting modules."""
import numpy as np
import pytest
import tensorflow as tf

from tnet_tf.modules import ClassificationModule, FeatureWeighting, LocationModule, PositionalEncoding


def test_squeeze_excitation_location_module_matches_table_5():
    module = LocationModule(3, "squeeze_excitation", width=80, se_width=40)
    logits = module(tf.random.normal([4, 3, 3, 80]))
    assert logits.shape == (4, 9)
    # Conv 80->80, SE 80->40->80, 2 coordinate maps (w, b), Conv 82->80, Conv 80->1.
    by_hand = (80 * 80 + 80) + (80 * 40 + 40) + (40 * 80 + 80) + 2 * 2 + (82 * 80 + 80) + (80 + 1)
    assert module.count_params() == by_hand == 19_725
    np.testing.assert_allclose(np.linalg.norm(logits.numpy(), axis=-1), 1.0, rtol=1e-5)


def test_context_location_module_matches_table_4():
    module = LocationModule(5, "context", width=512, initializer="glorot")
    logits = module(tf.random.normal([2, 5, 5, 1024]), context=tf.random.normal([2, 512]))
    assert logits.shape == (2, 25)
    # 1024 + 512 context + 2 coordinates = 1538 channels -> 512 -> 1.
    assert module.count_params() == (1538 * 512 + 512) + (512 + 1) + 2 * 2
    with pytest.raises(ValueError, match="final feature vector"):
        module(tf.random.normal([2, 5, 5, 1024]))


def test_location_module_uses_the_coordinates_and_the_context():
    module = LocationModule(3, "context", width=16, initializer="glorot")
    same = tf.ones([1, 3, 3, 4])
    logits = module(same, context=tf.ones([1, 8])).numpy()
    # Identical features everywhere: only the coordinate channels make the cells differ.
    assert np.std(logits) > 1e-4
    other = module(same, context=-tf.ones([1, 8])).numpy()
    assert not np.allclose(logits, other)
    # Every layer has its own initialiser draw (one shared unseeded instance repeats values).
    assert module.x_map.kernel.numpy() != module.y_map.kernel.numpy()


def test_l2_normalised_logits_bound_the_softmax():
    module = LocationModule(3)
    probs = tf.nn.softmax(module(tf.random.normal([64, 3, 3, 80]) * 100.0)).numpy()
    # With |logits| = 1 the largest gap between one logit and the 8 others is sqrt(1 + 1/8)
    # (the others equal), so no cell of 9 can exceed 1 / (1 + 8 exp(-sqrt(9/8))) ~ 0.265.
    assert probs.max() <= 1.0 / (1.0 + 8.0 * np.exp(-np.sqrt(9.0 / 8.0))) + 1e-6
    assert probs.max() > 0.2


def test_positional_encoding_fusions():
    features, code = tf.random.normal([2, 5, 1280]), tf.random.normal([2, 5, 320])
    add = PositionalEncoding("add_silu")
    out = add([features, code])
    assert add.count_params() == 320 * 1280 + 1280 == 410_880
    kernel, bias = add.dense.get_weights()
    np.testing.assert_allclose(out.numpy(), tf.nn.silu(features + code @ kernel + bias).numpy(),
                               atol=1e-4)
    concat = PositionalEncoding("concat_dense", initializer="glorot")
    out = concat([tf.random.normal([2, 512]), tf.random.normal([2, 512])])
    assert out.shape == (2, 512) and concat.count_params() == 1024 * 512 + 512


def test_classification_and_feature_weighting():
    classifier = ClassificationModule(62, dropout=0.5)
    features = tf.random.normal([3, 1280])
    logits = classifier(features, training=False)
    kernel, bias = classifier.dense.get_weights()
    np.testing.assert_allclose(logits.numpy(), features.numpy() @ kernel + bias, atol=1e-4)
    assert not np.allclose(classifier(features, training=True).numpy(), logits.numpy())

    weighting = FeatureWeighting()
    features = tf.random.normal([3, 7, 1280])
    weights = weighting(features)
    assert weights.shape == (3, 7)
    np.testing.assert_allclose(weights.numpy().sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(weights.numpy() > 0)
    # The authors' module in numpy: a squeeze-excitation gate over the mean
    # feature (C -> C/4 SiLU -> C sigmoid) rescales the features, Dense(1), softmax.
    (w1, b1), (w2, b2), (w3, b3) = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in
                                    (weighting.se_reduce, weighting.se_expand, weighting.score)]
    assert w1.shape == (1280, 320) and w2.shape == (320, 1280) and w3.shape == (1280, 1)
    x = features.numpy()
    hidden = x.mean(axis=1) @ w1 + b1
    gate = 1 / (1 + np.exp(-((hidden / (1 + np.exp(-hidden))) @ w2 + b2)))
    scores = ((x * gate[:, None, :]) @ w3 + b3)[..., 0]
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(weights.numpy(), expected / expected.sum(-1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
