"""Trains a tiny TNet with `fit` under MultiWorkerMirroredStrategy (one process
per worker, `TF_CONFIG` on loopback) or under MirroredStrategy on 2 logical
CPUs in one process; prints JSON lines.

    python tests/scripts/multi_worker.py --ports 23456,23457 --index 0 --out DIR ...
    python tests/scripts/multi_worker.py --ports mirrored --initial DIR/initial.npz --out DIR

Without --data every run reads the same fixed global batches of 4 images
(per-replica batches of 2, dealt out in order: replica r of step s gets
batch 2s + r, in both strategies), SGD from the same initial weights
(worker 0 writes them to <out>/initial.npz). With --data it reads the
TFRecords there through `pipeline.make_dataset` with the epoch layout a
resumed run fast-forwards, and every step appends the labels (example ids)
of its global batch to <out>/labels_<index>.jsonl. --model_dir turns on `checkpoints.training_callbacks`
(backups every --save_every steps, TensorBoard logs), resuming when run again.

Prints {"event": "start", "step", "baseline"}, one {"event": "step", ...}
per step and {"event": "done", ...}; saves the final weights and baseline
to <out>/weights_<index>.npz.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True, help="comma-separated worker ports, or "
                        "'mirrored' for one process with 2 logical CPUs")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--initial", help="initial weights (.npz) to start from")
    parser.add_argument("--data", help="a folder of TFRecord shards train-*")
    parser.add_argument("--num_classes", type=int, default=5)
    parser.add_argument("--model_dir")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps_per_epoch", type=int, default=4)
    parser.add_argument("--save_every", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0)
    return parser.parse_args(argv)


ARGS = parse(sys.argv[1:])
if ARGS.ports != "mirrored":
    ports = ARGS.ports.split(",")
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": ARGS.index}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if ARGS.ports == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tnet_tf  # noqa: E402
from tnet_tf import checkpoints  # noqa: E402
from tnet_tf.data import pipeline  # noqa: E402

GLOBAL_BATCH = 4


class RecordingTNet(tnet_tf.TNet):
    """A TNet that appends, at each step, the labels of the global batch (all
    replicas') to <out>/labels_<index>.jsonl, one JSON line per step."""

    def train_step(self, data):
        logs = super().train_step(data)
        labels = tf.distribute.get_replica_context().all_gather(tf.cast(data[1], tf.int64), axis=0)
        line = tf.strings.join([
            '{"step": ', tf.strings.as_string(self.optimizer.iterations), ', "labels": [',
            tf.strings.reduce_join(tf.strings.as_string(labels), separator=", "), "]}"])
        tf.print(line, output_stream="file://" + os.path.join(ARGS.out,
                                                               f"labels_{ARGS.index}.jsonl"))
        return logs


class Reporter(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        emit("start", self.model)

    def on_train_batch_end(self, batch, logs=None):
        emit("step", self.model, batch=int(batch), loss=float(logs["loss"]))
        time.sleep(ARGS.sleep)


def emit(event, model, **extra):
    print(json.dumps({"event": event, "step": int(model.optimizer.iterations.numpy()),
                      "baseline": float(model.baseline.numpy()), **extra}), flush=True)


def fixed_batches(context):
    """The fixed per-replica batches of 2, pipeline p taking every p-th one."""
    images = tf.random.stateless_uniform([16, 64, 64, 3], seed=[1, 2], minval=-1, maxval=1)
    labels = tf.random.stateless_uniform([16], seed=[3, 4], maxval=5, dtype=tf.int64)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(
        context.get_per_replica_batch_size(GLOBAL_BATCH))
    return batches.shard(context.num_input_pipelines, context.input_pipeline_id)


def record_batches(context, model_dir):
    config = pipeline.InputConfig(os.path.join(ARGS.data, "train-*"), image_size=64,
                                  batch_size=GLOBAL_BATCH, training=True, seed=0,
                                  shuffle_buffer=4, augment=False)
    epoch, step = (checkpoints.resume_position(model_dir, ARGS.steps_per_epoch) if model_dir
                   else (0, 0))
    epochs = pipeline.Epochs(ARGS.steps_per_epoch, ARGS.epochs, epoch, step)
    return pipeline.make_dataset(config, context, epochs=epochs)


def main():
    tf.keras.utils.set_random_seed(0)
    os.makedirs(ARGS.out, exist_ok=True)
    if ARGS.ports == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    config = tnet_tf.get_preset("tiny", num_classes=ARGS.num_classes)
    with strategy.scope():
        model = (RecordingTNet if ARGS.data else tnet_tf.TNet)(config)
        model(tf.zeros([1, 64, 64, 3]))
        model.compile(tf.keras.optimizers.SGD(0.5), lambda_f=0.5, lambda_c=0.3, lambda_r=0.3,
                      weight_decay=1e-3)
    if ARGS.initial:
        with np.load(ARGS.initial) as saved:
            model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
    elif ARGS.index == 0:
        np.savez(os.path.join(ARGS.out, "initial.npz"),
                 **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    callbacks = [Reporter()]
    if ARGS.model_dir:
        callbacks = checkpoints.training_callbacks(ARGS.model_dir, save_every=ARGS.save_every,
                                                   tensorboard_every=1) + callbacks
    data = tf.keras.utils.experimental.DatasetCreator(
        (lambda context: record_batches(context, ARGS.model_dir)) if ARGS.data
        else fixed_batches)
    history = model.fit(data, epochs=ARGS.epochs, steps_per_epoch=ARGS.steps_per_epoch,
                        verbose=0, callbacks=callbacks)
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    emit("done", model, logs=logs)
    np.savez(os.path.join(ARGS.out, f"weights_{ARGS.index}.npz"),
             baseline=model.baseline.numpy(),
             **{f"w{i}": w for i, w in enumerate(model.get_weights())})


if __name__ == "__main__":
    main()
