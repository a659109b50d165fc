"""The learning rule of eqs. (1)-(2b) and the baseline of eq. (7)."""
import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import losses
from tnet_tf.losses import LossWeights
from conftest import tiny_config

N, LOCATIONS = 2, [2, 1]          # 3 levels: features [1, 2, 2, 3, 3], locations [2, 2, 3, 3]


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(4)
    net = tnet_tf.TNet(tiny_config())
    net(tf.zeros([1, 128, 128, 3]), locations=LOCATIONS)
    return net


def _flat(gradients, variables):
    return np.concatenate([np.zeros(v.shape.num_elements()) if g is None
                           else np.ravel(g.numpy()) for g, v in zip(gradients, variables)])


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("samples, weights", [
    (1, LossWeights(lambda_f=0.1)),                                            # eq. (1)
    (1, LossWeights(lambda_f=0.1, lambda_c=0.3, lambda_r=0.3)),                # eq. (2)
    (2, LossWeights(lambda_f=0.7, lambda_c=0.2, lambda_r=0.6, max_feature_level=2)),
])
def test_gradients_match_the_learning_rule_by_hand(model, samples, weights):
    images = tf.random.stateless_uniform([N, 128, 128, 3], seed=[5, 6], minval=-1, maxval=1)
    labels = np.array([1, 3])
    # M samples per image, each with its own fixed locations (levels 2, 2, 3, 3).
    images = tf.tile(images, [samples, 1, 1, 1])
    labels = np.tile(labels, samples)
    chosen = np.array([[0, 4, 2, 8], [7, 3, 5, 5], [1, 8, 0, 6], [4, 5, 3, 7]])[:N * samples]
    baseline = 0.37
    variables = model.trainable_variables
    scale = {"classification": weights.lambda_c,
             "reinforce": weights.lambda_f * weights.lambda_r,
             "feature_classification": 1 - weights.lambda_c,
             "feature_reinforce": weights.lambda_f * (1 - weights.lambda_r)}
    with tf.GradientTape(persistent=True) as tape:
        out = model(images, locations=LOCATIONS, chosen_locations=chosen, training=False)
        terms = losses.tnet_loss(out, labels, tf.constant(baseline), weights)
        implemented = {name: scale[name] * tf.reduce_mean(terms[name])
                       for name in scale if name in terms}
        implemented["total"] = tf.reduce_mean(terms["total"])
        # The primitive log-probabilities the paper differentiates ...
        log_p_y = tf.gather(tf.nn.log_softmax(out["logits"]), labels, batch_dims=1)
        log_p_y_feature = tf.gather(tf.nn.log_softmax(out["feature_logits"]),
                                    np.repeat(labels[:, None], 5, axis=1), batch_dims=2)
        log_p_l = out["location_log_probs"]
        # ... and their coefficients in eqs. (2a) and (2b), in numpy.
        count = N * samples
        logits, feature_logits = out["logits"].numpy(), out["feature_logits"].numpy()
        reward = (logits.argmax(-1) == labels).astype(np.float64)
        feature_reward = (feature_logits.argmax(-1) == labels[:, None]).astype(np.float64)
        in_cap = np.array([1, 2, 2, 3, 3]) <= (weights.max_feature_level or 3)
        f, lc, lr = weights.lambda_f, weights.lambda_c, weights.lambda_r
        coefficient_y = np.full(count, lc) / count
        coefficient_l = np.repeat((f * lr * (reward - baseline))[:, None], 4, axis=1) / count
        coefficient_y_feature = np.tile((1 - lc) * in_cap / in_cap.sum(), [count, 1]) / count
        location_in_cap = in_cap[1:]
        coefficient_l_feature = (f * (1 - lr) * (feature_reward[:, 1:] - baseline)
                                 * location_in_cap / location_in_cap.sum()) / count

        def weighted(coefficients, quantity):
            return tf.reduce_sum(tf.constant(coefficients, tf.float32) * quantity)

        # The update directions of the learning rule (gradient ascent).
        rule = {"classification": weighted(coefficient_y, log_p_y),
                "reinforce": weighted(coefficient_l, log_p_l),
                "feature_classification": weighted(coefficient_y_feature, log_p_y_feature),
                "feature_reinforce": weighted(coefficient_l_feature, log_p_l)}
    np.testing.assert_array_equal(out["cells"].numpy(), chosen)

    def gradient(value):
        return _flat(tape.gradient(value, variables), variables)

    by_hand = {name: gradient(value) for name, value in rule.items()}
    for name, expected in by_hand.items():
        if name not in implemented:
            assert not weights.per_feature and not np.any(expected)
            continue
        np.testing.assert_allclose(gradient(implemented[name]), -expected, atol=1e-5,
                                   err_msg=name)
        assert np.abs(expected).max() > 1e-4, name
    total = gradient(implemented["total"])
    np.testing.assert_allclose(total, -sum(by_hand.values()), atol=1e-5)
    np.testing.assert_array_equal(terms["reward"].numpy(), reward)


def test_reinforce_reaches_only_the_location_path_and_classification_every_module(model):
    images = tf.random.stateless_uniform([N, 128, 128, 3], seed=[7, 8], minval=-1, maxval=1)
    weights = LossWeights(lambda_f=1.0, lambda_c=0.5, lambda_r=0.5)
    parts = {"backbone": model.backbone, "location_module": model.location_module,
             "positional_encoding": model.positional_encoding, "classifier": model.classifier}
    with tf.GradientTape(persistent=True) as tape:
        out = model(images, locations=LOCATIONS, training=False)
        terms = losses.tnet_loss(out, [0, 1], tf.constant(0.5), weights)
        # With R - b = -0.5 or 0.5 the REINFORCE terms have a non-zero gradient.
        reinforce = tf.reduce_mean(terms["reinforce"] + terms["feature_reinforce"])
        classification = tf.reduce_mean(terms["classification"] + terms["feature_classification"])

    def reached(loss, part):
        grads = tape.gradient(loss, part.trainable_variables)
        return any(g is not None and np.any(g.numpy() != 0) for g in grads)

    assert {name for name, part in parts.items() if reached(classification, part)} == {
        "backbone", "positional_encoding", "classifier"}
    assert {name for name, part in parts.items() if reached(reinforce, part)} == {
        "backbone", "location_module"}


@pytest.mark.parametrize("variant", ["squeeze_excitation", "context"])
@pytest.mark.parametrize("stop", [True, False])
def test_in_training_reinforce_trains_the_location_module_alone(variant, stop):
    # The authors detach the location module's inputs (the feature map; for
    # "context" also the feature vector) in training: REINFORCE never reaches
    # the backbone, which learns from the classification terms alone.
    tf.keras.utils.set_random_seed(9)
    net = tnet_tf.TNet(tiny_config(location_module=variant, location_stop_gradient=stop))
    images = tf.random.stateless_uniform([N, 128, 128, 3], seed=[7, 8], minval=-1, maxval=1)
    weights = LossWeights(lambda_f=1.0, lambda_c=0.5, lambda_r=0.5)
    with tf.GradientTape(persistent=True) as tape:
        out = net(images, locations=LOCATIONS, training=True)
        terms = losses.tnet_loss(out, [0, 1], tf.constant(0.5), weights)
        reinforce = tf.reduce_mean(terms["reinforce"] + terms["feature_reinforce"])
        classification = tf.reduce_mean(terms["classification"])

    def largest(loss, part):
        grads = tape.gradient(loss, part.trainable_variables)
        return max(0.0 if g is None else float(np.abs(g.numpy()).max()) for g in grads)

    assert largest(reinforce, net.location_module) > 1e-4
    assert largest(classification, net.backbone) > 1e-4
    if stop:
        assert largest(reinforce, net.backbone) == 0.0
    else:
        assert largest(reinforce, net.backbone) > 1e-6
    # Inference is unchanged by the stop.
    twin = tnet_tf.TNet(tiny_config(location_module=variant, location_stop_gradient=not stop))
    twin(images[:1], locations=LOCATIONS)
    twin.set_weights(net.get_weights())
    np.testing.assert_array_equal(twin(images, locations=LOCATIONS)["logits"].numpy(),
                                  net(images, locations=LOCATIONS)["logits"].numpy())


def test_baseline_reward_mixes_main_and_per_location_rewards():
    # The authors' baseline target: lambda_r mean R^s + (1 - lambda_r) mean R^k,
    # R^k over the attended locations inside the level cap.
    levels = tf.constant([1, 2, 2, 3, 3], tf.int32)
    labels = np.array([0, 1, 2])
    predicted = np.array([[0, 0, 1, 0, 1],      # per example: main, then features 1..5
                          [0, 1, 1, 0, 1],
                          [2, 2, 0, 2, 2]])
    main = np.array([0, 1, 2])               # main predictions: all right
    eye = np.eye(3, dtype=np.float32) * 5
    out = {"logits": tf.constant(eye[main]), "feature_logits": tf.constant(eye[predicted]),
           "location_log_probs": tf.zeros([3, 4]), "feature_levels": levels}
    for cap, lambda_r in ((None, 0.3), (2, 0.6), (None, 1.0)):
        weights = LossWeights(lambda_c=0.5, lambda_r=lambda_r, max_feature_level=cap)
        terms = losses.tnet_loss(out, labels, tf.constant(0.5), weights)
        locations = [1, 2] if cap == 2 else [1, 2, 3, 4]     # feature indices in the cap
        per_location = (predicted[:, locations] == labels[:, None]).mean()
        expected = lambda_r * 1.0 + (1 - lambda_r) * per_location
        assert float(tf.reduce_mean(terms["baseline_reward"])) == pytest.approx(expected)
    eq1 = losses.tnet_loss(out, labels, tf.constant(0.5), LossWeights())
    np.testing.assert_array_equal(eq1["baseline_reward"].numpy(), [1.0, 1.0, 1.0])


def test_rewards_and_reinforce_surrogate():
    logits = tf.constant([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    np.testing.assert_array_equal(losses.rewards(logits, [0, 0, 1]).numpy(), [1.0, 0.0, 0.0])
    log_probs = tf.Variable([-1.0, -2.0])
    with tf.GradientTape() as tape:
        surrogate = losses.reinforce_loss(log_probs, tf.constant([1.0, 0.0]), tf.constant(0.25))
    np.testing.assert_allclose(surrogate.numpy(), [0.75, -0.5])
    np.testing.assert_allclose(tape.gradient(surrogate, log_probs).numpy(),
                               [-0.75, 0.25])


def test_baseline_update_is_the_exponential_moving_average():
    baseline, mean_rewards = 0.5, [0.25, 1.0, 0.0, 0.5, 0.75]
    for reward in mean_rewards:
        baseline = losses.update_baseline(baseline, reward)
    k = len(mean_rewards)
    closed_form = 0.9 ** k * 0.5 + sum(0.1 * 0.9 ** (k - 1 - j) * r
                                       for j, r in enumerate(mean_rewards))
    assert baseline == pytest.approx(closed_form, abs=1e-12)


def test_location_entropy():
    probs = tf.constant([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(losses.location_entropy(probs).numpy(), [np.log(4) / 2], rtol=1e-6)


def test_loss_weights_are_checked():
    with pytest.raises(ValueError, match="lambda_c must be in"):
        LossWeights(lambda_c=1.5)
    with pytest.raises(ValueError, match="max_feature_level"):
        LossWeights(max_feature_level=0)
    assert not LossWeights().per_feature and LossWeights(lambda_r=0.3).per_feature


def _contrastive_by_hand(features, labels, margin):
    """The authors' loss, pair by pair: the mean over all (i, j) of the batch."""
    unit = (features + 1e-10) / np.linalg.norm(features + 1e-10, axis=-1, keepdims=True)
    total = 0.0
    for i in range(len(labels)):
        for j in range(len(labels)):
            cosine = float(unit[i] @ unit[j])
            total += 1 - cosine if labels[i] == labels[j] else max(cosine - margin, 0.0)
    return total / len(labels) ** 2


def test_contrastive_loss_matches_the_pairs_by_hand():
    rng = np.random.default_rng(3)
    features = rng.normal(size=[6, 5]).astype(np.float32)
    features[1] = features[0] + 0.1                  # a close pair of different classes
    labels = np.array([0, 1, 0, 2, 1, 0])
    for margin in (0.4, -0.2):
        per_example = losses.contrastive_loss(features, labels, margin).numpy()
        assert per_example.shape == (6,)
        np.testing.assert_allclose(per_example.mean(), _contrastive_by_hand(features, labels, margin),
                                   rtol=1e-5)
    # Identical features of one class cost nothing; orthogonal ones of two classes neither.
    assert losses.contrastive_loss(np.ones([3, 4]), [2, 2, 2], 0.4).numpy().max() < 1e-6
    assert losses.contrastive_loss(np.eye(2), [0, 1], 0.0).numpy().max() < 1e-6


def test_tnet_loss_adds_the_weighted_contrastive_term_on_the_pooled_features(model):
    images = tf.random.stateless_uniform([4, 128, 128, 3], seed=[1, 2], minval=-1, maxval=1)
    labels = np.array([1, 3, 1, 0])
    outputs = model(images, locations=LOCATIONS, training=False)
    np.testing.assert_allclose(outputs["pooled_features"].numpy(),
                               outputs["features"].numpy().mean(axis=1), rtol=1e-5, atol=1e-6)
    plain = losses.tnet_loss(outputs, labels, 0.5, LossWeights())
    weighted = losses.tnet_loss(outputs, labels, 0.5, LossWeights(contrastive_weight=100.0))
    expected = 100.0 * _contrastive_by_hand(outputs["pooled_features"].numpy(), labels, 0.4)
    np.testing.assert_allclose(weighted["contrastive"].numpy().mean(), expected, rtol=1e-4)
    np.testing.assert_allclose(weighted["total"].numpy(),
                               plain["total"].numpy() + weighted["contrastive"].numpy(), rtol=1e-5)
    assert "contrastive" not in plain
    with pytest.raises(ValueError, match="contrastive_weight"):
        LossWeights(contrastive_weight=-1.0)


def test_baseline_classifier_fit_adds_the_contrastive_loss():
    tf.keras.utils.set_random_seed(0)
    baseline = tnet_tf.Classifier(tiny_config(), input_size=64)
    baseline.compile(tf.keras.optimizers.SGD(0.0), contrastive_weight=100.0,
                     loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = tf.random.stateless_uniform([4, 64, 64, 3], seed=[3, 4], minval=-1, maxval=1)
    labels = np.array([0, 1, 0, 4])
    logits, pooled = baseline(images, training=True, return_features=True)
    cross_entropy = losses.classification_loss(logits, labels).numpy().mean()
    contrastive = 100.0 * _contrastive_by_hand(pooled.numpy(), labels, 0.4)
    result = baseline.train_on_batch(images, labels, return_dict=True)
    np.testing.assert_allclose(result["contrastive"], contrastive, rtol=1e-4)
    np.testing.assert_allclose(result["loss"], cross_entropy + contrastive, rtol=1e-4)
