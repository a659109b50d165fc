"""Trains a tiny TNet on random data with resumable backups; prints JSON lines.

    python tests/scripts/train_tiny.py --model_dir /tmp/run [--epochs 3 --steps_per_epoch 10]

Run again with the same command after a kill and it resumes from the last
backup. Prints {"event": "start", "step", "baseline", "learning_rate"} when
training (re)starts, one {"event": "step", ...} per step and
{"event": "done", ...} at the end.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

import tnet_tf  # noqa: E402
from tnet_tf import checkpoints, training  # noqa: E402


def emit(event, model, **extra):
    print(json.dumps({"event": event, "step": int(model.optimizer.iterations.numpy()),
                      "baseline": float(model.baseline.numpy()),
                      "learning_rate": float(training.current_learning_rate(model.optimizer)),
                      **extra}), flush=True)


class Reporter(tf.keras.callbacks.Callback):
    def __init__(self, sleep):
        super().__init__()
        self.sleep = sleep

    def on_train_begin(self, logs=None):
        emit("start", self.model)

    def on_train_batch_end(self, batch, logs=None):
        emit("step", self.model, batch=int(batch), step_learning_rate=float(logs["learning_rate"]))
        time.sleep(self.sleep)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps_per_epoch", type=int, default=10)
    parser.add_argument("--save_every", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)

    tf.keras.utils.set_random_seed(0)
    model = tnet_tf.TNet(tnet_tf.get_preset("tiny"))
    total = args.epochs * args.steps_per_epoch
    model.compile(training.make_optimizer(1e-3, total), lambda_c=0.3, lambda_r=0.3,
                  run_eagerly=True)
    images = tf.random.stateless_uniform([40, 64, 64, 3], seed=[1, 2], minval=-1, maxval=1)
    labels = tf.random.stateless_uniform([40], seed=[3, 4], maxval=5, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(4)
    callbacks = checkpoints.training_callbacks(args.model_dir, save_every=args.save_every,
                                               tensorboard=False) + [Reporter(args.sleep)]
    model.fit(dataset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=0,
              callbacks=callbacks)
    emit("done", model)


if __name__ == "__main__":
    main(sys.argv[1:])
