"""The policy options beyond the paper (all off in the presets): the scale of
the location logits, epsilon-random exploration, the entropy bonus and the
log-probability-gain reward, each against numpy, and their flags."""
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import tnet_tf
from experiments import runner
from experiments.fmow import ENTRY as FMOW
from tnet_tf import losses, training
from tnet_tf.modules import LocationModule, location_logits
from conftest import random_batch, tiny_config


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_location_logits_are_the_scaled_normalised_or_raw_scores():
    raw = np.random.default_rng(0).normal(size=(4, 9)).astype(np.float32) * 3
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    np.testing.assert_allclose(location_logits(raw), unit, rtol=1e-5)
    np.testing.assert_allclose(location_logits(raw, scale=4.0), 4 * unit, rtol=1e-5)
    np.testing.assert_allclose(location_logits(raw, normalize=False, scale=0.5), 0.5 * raw,
                               rtol=1e-6)
    # The paper's normalised logits differ by at most 2, so the top cell of 9
    # gets less than e^2 / (e^2 + 8); a scale sharpens the distribution.
    top = _softmax(unit).max(axis=-1)
    assert top.max() < np.e ** 2 / (np.e ** 2 + 8)
    assert (_softmax(8 * unit).max(axis=-1) > top).all()


def test_a_learnt_scale_starts_at_the_given_scale_and_gets_a_gradient():
    module = LocationModule(3, scale=2.5, learn_scale=True)
    grid = tf.random.stateless_normal([2, 3, 3, 4], seed=[1, 2])
    with tf.GradientTape() as tape:
        logits = module(grid)
        loss = tf.reduce_sum(tf.nn.log_softmax(logits)[:, 0])
    np.testing.assert_allclose(float(tf.exp(module.log_scale)), 2.5, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(logits.numpy(), axis=-1), [2.5, 2.5], rtol=1e-5)
    gradient = tape.gradient(loss, module.log_scale)
    assert gradient is not None and abs(float(gradient)) > 0
    # The paper's module has no such variable (release checkpoints map key by key).
    paper = LocationModule(3)
    paper(grid)
    assert paper.log_scale is None and not any("log_scale" in v.name for v in paper.weights)


def test_the_config_scale_reaches_the_model_and_its_saved_config():
    config = tiny_config(location_scale=6.0, location_normalize=False)
    model = tnet_tf.TNet(config)
    assert (model.location_module.scale, model.location_module.normalize) == (6.0, False)
    assert tnet_tf.TNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="location_scale must be > 0"):
        tiny_config(location_scale=0.0)


def test_epsilon_random_cells_replace_that_share_of_the_rows():
    rows, epsilon = 20000, 0.3
    log_probs = tf.math.log(tf.tile([[0.999] + [0.001 / 8] * 8], [rows, 1]))
    chosen = tnet_tf.select_cells(log_probs, 1, "top_k", seed=5,
                                  random_cells=tf.constant(epsilon)).numpy()[:, 0]
    # A random row still picks the top cell with probability 1/9.
    expected = epsilon * 8 / 9
    sigma = np.sqrt(expected * (1 - expected) / rows)
    assert abs(np.mean(chosen != 0) - expected) < 4 * sigma
    counts = np.bincount(chosen[chosen != 0], minlength=9)[1:]
    assert counts.min() > 0.8 * counts.mean()          # uniform over the other cells
    never = tnet_tf.select_cells(log_probs, 1, random_cells=tf.constant(0.0)).numpy()
    always = tnet_tf.select_cells(log_probs, 1, random_cells=tf.constant(1.0)).numpy()
    assert (never == 0).all() and np.mean(always != 0) > 0.85


def test_exploration_probability_follows_warmup_then_a_linear_decay():
    options = training.TrainingOptions(random_warmup_steps=10, exploration_epsilon=0.5,
                                       exploration_steps=100)
    steps = [0, 9, 10, 60, 110, 500]
    values = [float(training.exploration_probability(tf.constant(s, tf.int64), options))
              for s in steps]
    np.testing.assert_allclose(values, [1.0, 1.0, 0.5, 0.25, 0.0, 0.0], atol=1e-7)
    held = training.TrainingOptions(exploration_epsilon=0.2)
    assert float(training.exploration_probability(tf.constant(10 ** 6, tf.int64), held)) == \
        pytest.approx(0.2)
    # Without epsilon: the warm-up's switch as before, or nothing at all.
    warmup = training.TrainingOptions(random_warmup_steps=3)
    assert bool(training.exploration_probability(2, warmup))
    assert not bool(training.exploration_probability(3, warmup))
    assert training.exploration_probability(0, training.TrainingOptions()) is None
    with pytest.raises(ValueError, match="exploration_epsilon must be in"):
        training.TrainingOptions(exploration_epsilon=1.5)


def _outputs(seed=0, batch=3, classes=4):
    """A hand-made outputs dict: features 0 (level 1), 1 and 2 (level 2, parent
    0) and 3 (level 3, parent 1)."""
    rng = np.random.default_rng(seed)
    probs = [_softmax(rng.normal(size=(batch, 1, 9))), _softmax(rng.normal(size=(batch, 2, 9)))]
    return {
        "logits": tf.constant(rng.normal(size=(batch, classes)), tf.float32),
        "feature_logits": tf.constant(rng.normal(size=(batch, 4, classes)), tf.float32),
        "feature_levels": tf.constant([1, 2, 2, 3]),
        "feature_parents": tf.constant([-1, 0, 0, 1]),
        "location_log_probs": tf.constant(np.log(rng.uniform(0.05, 1, size=(batch, 3))),
                                          tf.float32),
        "location_probs": [tf.constant(p, tf.float32) for p in probs],
        "pooled_features": tf.zeros([batch, 2]),
    }


def _log_softmax(x):
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_log_prob_gain_rewards_are_the_true_class_gains():
    outputs, labels = _outputs(), np.array([0, 3, 1])
    main, per_feature = losses.location_rewards(outputs, labels, "log_prob_gain")
    rows = np.arange(3)
    whole = _log_softmax(outputs["logits"].numpy())[rows, labels]
    alone = _log_softmax(outputs["feature_logits"].numpy())[rows, :, labels]   # [N, F]
    np.testing.assert_allclose(main, whole - alone[:, 0], rtol=1e-5, atol=1e-6)
    expected = np.stack([np.zeros(3), alone[:, 1] - alone[:, 0], alone[:, 2] - alone[:, 0],
                         alone[:, 3] - alone[:, 1]], axis=1)
    np.testing.assert_allclose(per_feature, expected, rtol=1e-5, atol=1e-6)
    correct_main, correct_features = losses.location_rewards(outputs, labels, "correct")
    np.testing.assert_array_equal(correct_main, outputs["logits"].numpy().argmax(-1) == labels)
    np.testing.assert_array_equal(correct_features,
                                  outputs["feature_logits"].numpy().argmax(-1) == labels[:, None])


def test_the_gain_reward_drives_the_reinforce_terms():
    outputs, labels = _outputs(1), np.array([2, 0, 1])
    weights = losses.LossWeights(lambda_f=0.5, lambda_c=0.4, lambda_r=0.25, reward="log_prob_gain")
    terms = losses.tnet_loss(outputs, labels, 0.1, weights)
    main, per_feature = (np.asarray(v) for v in losses.location_rewards(outputs, labels,
                                                                           "log_prob_gain"))
    log_probs = outputs["location_log_probs"].numpy()
    np.testing.assert_allclose(terms["reinforce"], -(main - 0.1) * log_probs.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(terms["feature_reinforce"],
                               np.mean(-(per_feature[:, 1:] - 0.1) * log_probs, axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(terms["baseline_reward"],
                               0.25 * main + 0.75 * per_feature[:, 1:].mean(1), rtol=1e-5)
    assert losses.initial_baseline("log_prob_gain") == 0.0
    assert losses.initial_baseline("correct") == losses.BASELINE_INITIAL
    with pytest.raises(ValueError, match="reward must be one of correct, log_prob_gain"):
        losses.LossWeights(reward="accuracy")


def test_the_entropy_bonus_subtracts_beta_times_the_mean_level_entropy():
    outputs, labels = _outputs(2), np.array([1, 1, 0])
    plain = losses.tnet_loss(outputs, labels, 0.5, losses.LossWeights())
    bonus = losses.tnet_loss(outputs, labels, 0.5, losses.LossWeights(entropy_weight=0.2))

    def entropy(p):
        return -(p * np.log(p)).sum(-1).mean(-1)

    expected = np.mean([entropy(p.numpy()) for p in outputs["location_probs"]], axis=0)
    np.testing.assert_allclose(bonus["entropy"], expected, rtol=1e-5)
    np.testing.assert_allclose(bonus["total"], plain["total"] - 0.2 * expected, rtol=1e-5)
    assert "entropy" not in plain
    with pytest.raises(ValueError, match="entropy_weight must be >= 0"):
        losses.LossWeights(entropy_weight=-1.0)


def test_fit_with_every_option_on_trains_and_logs_the_entropy():
    model = tnet_tf.TNet(tiny_config(locations=(2,), location_scale=4.0,
                                     learn_location_scale=True))
    model.compile(training.make_optimizer(1e-2, 4), lambda_c=0.5, lambda_r=0.5,
                  selection="sample", entropy_weight=0.01, reward="log_prob_gain",
                  exploration_epsilon=0.5, exploration_steps=2, random_warmup_steps=1,
                  run_eagerly=True)
    assert float(model.baseline) == 0.0
    start = float(model.location_module.log_scale)
    images, labels = random_batch(8, 128)
    history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and "entropy" in history.history
    assert float(model.location_module.log_scale) != start
    assert float(model.baseline) != 0.0


def _block_mean(image, k):
    h, w, c = image.shape
    return image.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))


def test_antialiased_glimpses_are_box_filtered_blocks_of_the_image():
    images = tf.random.stateless_uniform([2, 128, 128, 3], [3, 4], -1.0, 1.0)
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]] * 2)
    corner = tf.constant([[[0.0, 0.0, 0.5, 0.5]]] * 2)          # a level-2 cell: 64 px
    model = tnet_tf.TNet(tiny_config(glimpse_antialias=True))   # 32 px base
    pixels = images.numpy()
    np.testing.assert_allclose(model.glimpses(images, whole, 1)[1], _block_mean(pixels[1], 4),
                               atol=1e-5)
    np.testing.assert_allclose(model.glimpses(images, corner, 2)[0],
                               _block_mean(pixels[0, :64, :64], 2), atol=1e-5)
    # Off (the paper): one bilinear sample per pixel, as tf.image.resize without antialias.
    plain = tnet_tf.TNet(tiny_config())
    np.testing.assert_allclose(plain.glimpses(images, whole, 1),
                               tf.image.resize(images, [32, 32], antialias=False), atol=1e-5)
    outputs = model(images, locations=[2, 1], training=False)
    assert outputs["logits"].shape == (2, 5)


def test_every_option_is_a_flag_of_the_recipe_or_the_model():
    values = flags.FlagValues()
    runner.define_flags(FMOW, default_stage="train_448", flag_values=values)
    values(["prog", "--model_dir=/tmp/x", "--selection=sample", "--reward=log_prob_gain",
            "--entropy_weight=0.05", "--exploration_epsilon=0.2", "--exploration_steps=300",
            "--location_scale=5", "--learn_location_scale", "--nolocation_normalize",
            "--glimpse_antialias"])
    config = runner.read_flags(FMOW, flag_values=values)
    recipe, model = config.recipe, config.model_config
    assert (recipe.selection, recipe.reward, recipe.entropy_weight, recipe.exploration_epsilon,
            recipe.exploration_steps) == ("sample", "log_prob_gain", 0.05, 0.2, 300)
    assert (model.location_scale, model.learn_location_scale, model.location_normalize,
            model.glimpse_antialias) == (5.0, True, False, True)
    # Off in the paper presets.
    paper = runner.read_flags(FMOW, flag_values=_fresh_values())
    assert (paper.recipe.selection, paper.recipe.reward, paper.recipe.entropy_weight,
            paper.recipe.exploration_epsilon) == ("top_k", "correct", 0.0, 0.0)
    assert (paper.model_config.location_scale, paper.model_config.learn_location_scale,
            paper.model_config.location_normalize, paper.model_config.glimpse_antialias) == \
        (1.0, False, True, False)
    bad = _fresh_values(["--reward=accuracy"])
    assert bad is None


def _fresh_values(extra=()):
    values = flags.FlagValues()
    runner.define_flags(FMOW, default_stage="train_448", flag_values=values)
    try:
        values(["prog", "--model_dir=/tmp/x", *extra])
    except flags.IllegalFlagValueError:
        return None
    return values
