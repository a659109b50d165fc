"""Checkpoints: backups, NaN stops, stage-to-stage initialisation, time left."""
import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import checkpoints
from conftest import random_batch as _data, tiny_config


def _model(**overrides):
    return tnet_tf.TNet(tiny_config(locations=(2,), **overrides))


def test_nan_loss_stops_training_with_a_clear_message(tmp_path):
    model = _model()
    model.compile("adam", run_eagerly=True)
    images, labels = _data(8)
    images = tf.concat([images[:4], tf.fill([4, 64, 64, 3], np.nan)], axis=0)
    callbacks = checkpoints.training_callbacks(str(tmp_path), save_every=1, tensorboard=False)
    with pytest.raises(checkpoints.NonFiniteLossError, match="loss is nan at step 2"):
        model.fit(images, labels, batch_size=4, epochs=1, verbose=0, callbacks=callbacks,
                  shuffle=False)
    # The backup holds the last finite state: step 1.
    reader = tf.train.load_checkpoint(checkpoints.find_checkpoint(str(tmp_path / "backup")))
    assert reader.get_tensor("model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert np.isfinite(reader.get_tensor("model/baseline/.ATTRIBUTES/VARIABLE_VALUE"))


def test_a_later_stage_initialises_from_an_earlier_checkpoint(tmp_path):
    earlier = _model()
    earlier.compile("adam", run_eagerly=True)
    images, labels = _data(4)
    earlier.fit(images, labels, batch_size=4, epochs=1, verbose=0,
                callbacks=checkpoints.training_callbacks(str(tmp_path), save_every=1,
                                                         tensorboard=False))
    later = _model(num_classes=7)
    later.compile("adam")
    with pytest.raises(ValueError, match="pass it in `skip`"):
        later_copy = _model(num_classes=7)
        checkpoints.initialize_from_checkpoint(later_copy, str(tmp_path / "backup"))
    report = checkpoints.initialize_from_checkpoint(later, str(tmp_path / "backup"),
                                                    skip=["classifier"])
    assert report == {"restored": ["backbone", "baseline", "location_module",
                                   "positional_encoding"],
                      "skipped": ["classifier"], "missing": []}
    for ours, theirs in zip(later.backbone.weights + later.location_module.weights,
                            earlier.backbone.weights + earlier.location_module.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert later.baseline.numpy() == earlier.baseline.numpy() != 0.5
    assert later.classifier.dense.kernel.shape == (64, 7)
    assert int(later.optimizer.iterations.numpy()) == 0
    # model.save_weights layout (no "model/" prefix) works too.
    earlier.save_weights(str(tmp_path / "weights" / "w"))
    other = _model()
    assert checkpoints.initialize_from_checkpoint(other, str(tmp_path / "weights"),
                                                  skip=["baseline"])["restored"] == [
        "backbone", "classifier", "location_module", "positional_encoding"]
    np.testing.assert_array_equal(other.classifier.dense.kernel.numpy(),
                                  earlier.classifier.dense.kernel.numpy())


def test_time_left_is_printed_after_every_epoch(capsys):
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensors((tf.ones([2, 3]), tf.ones([2, 1]))).repeat(2)
    model.fit(data, epochs=3, verbose=0, callbacks=[checkpoints.TimeLeft()])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")]
    assert [l.split(":")[0] for l in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("spent, about" in l for l in lines) and lines[-1].endswith("0:00:00 left")
