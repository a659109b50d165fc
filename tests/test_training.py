"""Training TNet with fit: optimizer, schedules, baseline, metrics, mixed precision.

Short runs use `run_eagerly=True`: on CPU, tracing the train step costs more
than a few eager steps of the tiny model.
"""
import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import backbones, geometry, losses, training
from conftest import random_batch as _data, tiny_config


def _model(**overrides):
    return tnet_tf.TNet(tiny_config(locations=(2,), **overrides))


class StepLogger(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({name: float(value) for name, value in logs.items()})


def test_learning_rate_drops_once_at_80_percent_of_the_steps():
    schedule = training.DropOnceSchedule(1e-3, total_steps=100)
    rates = [float(schedule(step)) for step in (0, 79, 80, 99, 500)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-4, 1e-4], rtol=1e-6)
    optimizer = training.make_optimizer(1e-3, 10)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-7)
    restored = training.DropOnceSchedule.from_config(schedule.get_config())
    assert restored.drop_step == 80


def test_cosine_schedule_and_bad_schedule_name():
    optimizer = training.make_optimizer(1e-3, 100, schedule="cosine")
    schedule = optimizer._learning_rate      # the schedule as passed (Keras has no public getter)
    rates = [float(schedule(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [1e-3, 0.5e-3, 0.0], atol=1e-9)
    assert float(schedule(25)) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi / 4)))
    with pytest.raises(ValueError, match="schedule must be one of drop, cosine; got 'linear'"):
        training.make_optimizer(1e-3, 100, schedule="linear")


def test_random_warmup_attends_random_cells_for_the_first_steps():
    model = _model()
    model.compile(training.make_optimizer(1e-3, 10), random_warmup_steps=2, run_eagerly=True)
    seen = []
    original = model.call

    def spy(*args, **kwargs):
        seen.append(kwargs.get("random_cells"))
        return original(*args, **kwargs)

    model.call = spy
    model.fit(tf.data.Dataset.from_tensor_slices(_data()).batch(4), epochs=2, verbose=0)
    assert [bool(flag) for flag in seen] == [True, True, False, False]
    with pytest.raises(ValueError, match="random_warmup_steps must be >= 0"):
        training.TrainingOptions(random_warmup_steps=-1)


def test_baseline_after_k_steps_is_the_closed_form_of_eq7():
    # One step per epoch, so every epoch's logs hold that step's mean rewards.
    model = _model()
    model.compile(training.make_optimizer(3e-3, 5), lambda_c=0.5, lambda_r=0.25,
                  monte_carlo_samples=2, selection="sample", run_eagerly=True)
    images, labels = _data()
    history = model.fit(images, labels, batch_size=8, epochs=5, verbose=0)
    # With per-feature regularization the authors' baseline follows
    # lambda_r mean R^s + (1 - lambda_r) mean R^k (R^k over the attended locations).
    main, per_location = history.history["reward"], history.history["feature_reward"]
    assert all(0.0 <= r <= 1.0 for r in main + per_location)
    assert main != per_location
    rewards = [0.25 * r + 0.75 * r_k for r, r_k in zip(main, per_location)]
    k = len(rewards)
    closed_form = 0.9 ** k * 0.5 + sum(0.1 * 0.9 ** (k - 1 - j) * r for j, r in enumerate(rewards))
    assert float(model.baseline.numpy()) == pytest.approx(closed_form, abs=1e-6)
    # The logged baseline of each step is the value after that step's update.
    expected = 0.5
    for reward, logged in zip(rewards, history.history["baseline"]):
        expected = 0.9 * expected + 0.1 * reward
        assert logged == pytest.approx(expected, abs=1e-6)
    assert history.history["locations_per_image"][0] == 2.0
    for name in ("loss", "classification", "reinforce", "feature_classification",
                 "feature_reinforce", "feature_reward", "top1", "top5", "location_entropy_l2",
                 "learning_rate"):
        assert np.isfinite(history.history[name]).all(), name
    assert history.history["location_entropy_l2"][0] <= np.log(9) + 1e-6
    evaluation = model.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True)
    assert 0.0 <= evaluation["top1"] <= 1.0 and "location_entropy_l2" in evaluation
    assert float(model.baseline.numpy()) == pytest.approx(closed_form, abs=1e-6)


def test_loss_is_the_mean_of_the_per_example_terms_and_reward_matches_top1():
    model = _model()
    model.compile("adam", lambda_c=0.3, lambda_r=0.3, run_eagerly=True)
    images, labels = _data(4)
    logger = StepLogger()
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0, callbacks=[logger])
    step = logger.steps[0]
    assert step["reward"] == step["top1"]
    expected = (0.3 * step["classification"] + 0.1 * 0.3 * step["reinforce"]
                + 0.7 * step["feature_classification"] + 0.1 * 0.7 * step["feature_reinforce"])
    assert step["loss"] == pytest.approx(expected, rel=1e-5)


def test_weight_decay_skips_normalization_variables():
    model = _model()
    model(tf.zeros([1, 64, 64, 3]), locations=[1])
    decayed = training.decayed_variables(model)
    names = {v.name for v in decayed}
    assert not any("_gn" in name for name in names)
    assert "stage1_conv1/kernel:0" in names and any("classifier" in v.name or "logits" in v.name
                                                    for v in decayed)
    group_norm = [v for v in model.trainable_variables if "_gn" in v.name]
    assert len(group_norm) == 16 and len(decayed) == len(model.trainable_variables) - 16
    batch_norm = tf.keras.Sequential([tf.keras.layers.Conv2D(4, 3),
                                      tf.keras.layers.BatchNormalization(),
                                      backbones.LevelBatchNormalization(),
                                      tf.keras.layers.Dense(2)])
    batch_norm.build([None, 8, 8, 3])
    assert [v.name.split("/")[-1] for v in training.decayed_variables(batch_norm)] == \
        ["kernel:0", "bias:0", "kernel:0", "bias:0"]
    penalty = training.l2_penalty(decayed, 1e-4)
    by_hand = 1e-4 * sum(np.sum(np.square(v.numpy())) for v in decayed)
    assert float(penalty) == pytest.approx(by_hand, rel=1e-5)


def test_backbone_optimizer_has_its_own_learning_rate():
    model = _model()
    model.compile(tf.keras.optimizers.Adam(1e-2),
                  backbone_optimizer=tf.keras.optimizers.Adam(0.0), run_eagerly=True)
    images, labels = _data(4)
    model(images, locations=[2])
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    backbone = {v.name for v in model.backbone.trainable_variables}
    changed = {v.name for v in model.trainable_variables
               if not np.array_equal(v.numpy(), before[v.name])}
    assert changed and not changed & backbone
    assert int(model.backbone_optimizer.iterations.numpy()) == 1


def test_mixed_float16_training_scales_the_loss():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model()
        model.compile(tf.keras.optimizers.Adam(1e-3), lambda_c=0.3, lambda_r=0.3,
                      run_eagerly=True)
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        images, labels = _data(4)
        model(images[:1], locations=[2])
        before = [v.numpy().copy() for v in model.trainable_variables]
        logs = model.fit(images, labels, batch_size=4, epochs=2, verbose=0).history
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(value) for values in logs.values() for value in values)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert sum(changed) > len(changed) // 2     # a finite, unscaled update reached the weights


def test_batch_norm_recalibration_averages_each_levels_batch_statistics():
    tf.keras.utils.set_random_seed(4)
    model = tnet_tf.TNet(tiny_config(
        backbone={"norm": "batch"}, input_size=64,
        locations=(1,)))
    batches = [(tf.random.stateless_uniform([4, 64, 64, 3], seed=(i, 9), minval=-1.0,
                                            maxval=0.5 + i), tf.zeros([4], tf.int32))
               for i in range(3)]
    assert training.recalibrate_batch_norm(model, batches + batches, steps=3) == 3

    norm = model.backbone.get_layer("stage1_bn1")
    conv = model.backbone.get_layer("stage1_conv1")
    whole = [tf.image.crop_and_resize(images, tf.tile(geometry.crop_and_resize_boxes(
        tf.constant([[0.0, 0.0, 1.0, 1.0]]), 64, 64, 32), [4, 1]), tf.range(4), [32, 32])
        for images, _ in batches]
    outputs = [conv(images).numpy().reshape(-1, 8) for images in whole]
    np.testing.assert_allclose(norm.norms[0].moving_mean,
                               np.mean([o.mean(axis=0) for o in outputs], axis=0),
                               rtol=1e-4, atol=1e-6)
    # Keras keeps the unbiased variance (4 images x 16 x 16 positions per batch).
    np.testing.assert_allclose(norm.norms[0].moving_variance,
                               np.mean([o.var(axis=0, ddof=1) for o in outputs], axis=0),
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(norm.norms[1].moving_mean, 0.0)      # level 2 was recalibrated
    np.testing.assert_array_equal(norm.norms[2].moving_mean, 0.0)   # level 3 never ran
    assert all(n.momentum == 0.99 for n in norm.norms)
    # Nothing to do for a model without batch norm per level.
    assert training.recalibrate_batch_norm(_model(), batches, steps=3) == 0


def _three_steps(jit_compile, **compile_options):
    """A 3-level batch-norm TNet after 3 training steps and one evaluation."""
    tf.keras.utils.set_random_seed(0)
    model = tnet_tf.TNet(tiny_config(backbone={"norm": "batch"}, feature_weighting=True))
    model.compile(training.make_optimizer(1e-3, 10), lambda_c=0.3, lambda_r=0.3,
                  weight_decay=1e-4, jit_compile=jit_compile, **compile_options)
    images, labels = _data(8, 128)
    logs = [model.train_on_batch(images, labels, return_dict=True) for _ in range(3)]
    return model, logs[-1], model.evaluate(images, labels, return_dict=True, verbose=0)


@pytest.mark.slow   # XLA compiles a 3-level TNet for about a minute
def test_train_and_test_steps_compile_with_xla_and_match_the_uncompiled_ones():
    plain, xla = _three_steps(False), _three_steps(True)
    assert xla[0].xla_compatible and not plain[0].xla_compatible
    for key in ("loss", "classification", "reinforce", "feature_reinforce", "baseline", "top1"):
        assert xla[1][key] == pytest.approx(plain[1][key], rel=1e-4, abs=1e-5), key
        assert xla[2][key] == pytest.approx(plain[2][key], rel=1e-4, abs=1e-5), key
    for a, b in zip(plain[0].weights, xla[0].weights):       # moving statistics per level too
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4, err_msg=a.name)
    # The step really is compiled: the tf.image.crop_and_resize path has no XLA kernel.
    model = xla[0]
    model.xla_compatible = False
    model.train_function = None
    with pytest.raises(tf.errors.InvalidArgumentError, match="CropAndResize"):
        model.train_on_batch(*_data(8, 128))


@pytest.mark.slow   # XLA compiles a 3-level TNet for about a minute
def test_sampled_and_random_cells_compile_with_xla():
    model, logs, evaluation = _three_steps(True, selection="sample", monte_carlo_samples=2,
                                           random_warmup_steps=2)
    assert all(np.isfinite(value) for value in [*logs.values(), *evaluation.values()])
    assert int(model.optimizer.iterations.numpy()) == 3


def test_mixed_bfloat16_steps_stay_finite_with_float32_policy_terms():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _model()
        model.compile(training.make_optimizer(1e-3, 10), lambda_c=0.3, lambda_r=0.3)
        images, labels = _data(8)
        logs = [model.train_on_batch(images, labels, return_dict=True) for _ in range(3)]
        outputs = model(images, training=True)
        terms = losses.tnet_loss(outputs, labels, model.baseline,
                                 model.training_options.loss_weights)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert outputs["features"].dtype == tf.bfloat16          # the backbone ran in bfloat16
    for probs in outputs["location_probs"]:
        assert probs.dtype == tf.float32
    assert outputs["location_log_probs"].dtype == tf.float32
    assert model.baseline.dtype == tf.float32
    for name, value in terms.items():
        assert value.dtype == tf.float32, name
        assert np.all(np.isfinite(value.numpy())), name
    assert all(np.isfinite(value) for step in logs for value in step.values())
