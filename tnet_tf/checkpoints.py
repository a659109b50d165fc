"""Checkpoints, resumption, stage-to-stage initialisation and NaN stops.

A run resumes by itself: `training_callbacks` backs the whole training state
up every `save_every` steps with Keras `BackupAndRestore` (the model, which
owns the baseline b and the optimizers, hence the step count on which the
learning-rate schedule runs, plus the epoch and batch reached). Started
again with the same command after being killed, `fit` restores the last
backup and continues from the next step of the same epoch. Keras does not
fast-forward the input pipeline; `resume_position` reads where the backup
stands so that the training input (`pipeline.Epochs`) starts there: the
resumed epoch reads the batches the uninterrupted run would have read and
sees no example twice. Under MultiWorkerMirroredStrategy the chief writes
`<model_dir>/backup/chief`, which every worker restores from (a shared
file system); the other workers write temporary copies that Keras removes.
The backup is kept at the end of training.

A later stage initialises from the earlier stage's final weights (the
entry points save them to `<stage>/final/weights` after the batch-norm
statistics are re-estimated), not from its backup:

    report = initialize_from_checkpoint(model, "runs/stage1/final/weights",
                                        skip=("classifier",))
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Dict, List, Sequence, Tuple

import tensorflow as tf

# The parts of a TNet a later stage can take from an earlier checkpoint.
MODEL_PARTS = ("backbone", "location_module", "positional_encoding", "classifier",
               "feature_weighting", "baseline")


class NonFiniteLossError(RuntimeError):
    """Raised by `StopOnNonFiniteLoss`."""


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Stops training with a clear error when the loss becomes NaN or infinite.

    Put it before the checkpointing callback: the backup then keeps the last
    finite state rather than the one the bad step produced.
    """

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        terms = ", ".join(f"{name}={float(value):.4g}" for name, value in logs.items()
                          if name != "loss")
        raise NonFiniteLossError(
            f"training stopped: the loss is {float(loss)} at step {step} (batch {batch} of "
            f"this epoch); {terms}. The last checkpoint holds the last finite state. Check "
            f"the input data for NaN/inf values or lower the learning rate.")


def training_callbacks(model_dir: str, save_every: int = 500, tensorboard: bool = True,
                       tensorboard_every: int = 100) -> List[tf.keras.callbacks.Callback]:
    """NaN stop, resumable backups every `save_every` steps, TensorBoard logs
    and the time left of the whole fit after every epoch.

    Backups go to `<model_dir>/backup`, TensorBoard logs (every metric and
    loss term, `tensorboard_every` steps and per epoch) to `<model_dir>/logs`.
    """
    callbacks = [StopOnNonFiniteLoss(), TimeLeft(),
                 tf.keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup"),
                                                     save_freq=save_every,
                                                     delete_checkpoint=False)]
    if tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"),
                                                        update_freq=tensorboard_every))
    return callbacks


def resume_position(model_dir: str, steps_per_epoch: int) -> Tuple[int, int]:
    """(epoch, step) at which `fit` with `training_callbacks(model_dir)` starts:
    (0, 0) without a backup, else the step after the backed-up one (the rule
    of Keras's `BackupAndRestore`: after an epoch's last step, the next epoch)."""
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "backup", "chief"))
    if latest is None:
        return 0, 0
    epoch, batch = (int(tf.train.load_variable(latest, f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
                    for name in ("ckpt_saved_epoch", "ckpt_saved_batch"))
    if batch < 0 or batch >= steps_per_epoch - 1:     # an epoch-end backup
        return max(epoch + 1, 0), 0
    return epoch, batch + 1


class TimeLeft(tf.keras.callbacks.Callback):
    """Prints, after every epoch, the time spent and the time left of the whole
    `fit` (the progress bar's ETA covers one epoch only). The line is printed
    when the next epoch starts (or training ends), below the finished bar."""

    def on_train_begin(self, logs=None):
        self._start, self._first_epoch, self._finished = time.time(), None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._report()
        if self._first_epoch is None:
            self._first_epoch = epoch     # after a resume, epochs before it were not timed

    def on_epoch_end(self, epoch, logs=None):
        self._finished = epoch

    def on_train_end(self, logs=None):
        self._report()

    def _report(self):
        if self._finished is None:
            return
        total = self.params.get("epochs") or 0
        spent = time.time() - self._start
        done = self._finished + 1 - self._first_epoch
        left = spent / max(done, 1) * (total - self._finished - 1)
        print(f"epoch {self._finished + 1}/{total}: {_clock(spent)} spent, about {_clock(left)} "
              "left", flush=True)
        self._finished = None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def find_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix, a directory, or a backup directory."""
    if tf.io.gfile.isdir(path):
        for directory in (path, os.path.join(path, "chief")):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
        raise FileNotFoundError(f"no checkpoint in {path} (nor in {path}/chief)")
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"no checkpoint at {path} ({path}.index does not exist)")
    return path


def _build(model):
    if not model.built:
        size = model.config.input_size
        model(tf.zeros([1, size, size, 3]), locations=[1] if size > model.config.base_resolution
              else [0])


def initialize_from_checkpoint(model, path: str, skip: Sequence[str] = ()) -> Dict[str, list]:
    """Initialises `model` from the TNet parts found in an earlier checkpoint.

    `path` is a checkpoint prefix or directory written by `training_callbacks`
    (`tf.train.Checkpoint(model=...)` layout) or by `model.save_weights`.
    Parts named in `skip` (from MODEL_PARTS, e.g. "classifier" when the
    class count changes) keep their fresh initialisation; the optimizer
    state is never taken. Returns and logs {"restored": [...parts],
    "skipped": [...], "missing": [parts absent from the checkpoint]}.
    """
    unknown = set(skip) - set(MODEL_PARTS)
    if unknown:
        raise ValueError(f"unknown parts to skip: {sorted(unknown)}; parts are "
                         f"{', '.join(MODEL_PARTS)}")
    prefix = find_checkpoint(path)
    _build(model)
    keys = [name for name, _ in tf.train.list_variables(prefix)]
    root = "model/" if any(key.startswith("model/") for key in keys) else ""
    report = {"restored": [], "skipped": [], "missing": []}
    parts = {}
    for name in MODEL_PARTS:
        part = getattr(model, name, None)
        if part is None:
            continue
        if name in skip:
            report["skipped"].append(name)
        elif not any(key.startswith(f"{root}{name}/") for key in keys):
            report["missing"].append(name)
        else:
            parts[name] = part
    # The parts under their attribute names, rooted as in the checkpoint.
    graph = tf.Module()
    for name, part in parts.items():
        setattr(graph, name, part)
    if root:
        graph, inner = tf.Module(), graph
        graph.model = inner
    try:
        checkpoint = tf.train.Checkpoint(graph)   # kept alive until the checks are done
        status = checkpoint.read(prefix)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            f"could not initialise {sorted(parts)} from {prefix}: {error}. If a part changed "
            f"shape (e.g. the classifier for a new class count), pass it in `skip`.") from error
    report["restored"] = sorted(parts)
    logging.info("initialised from %s: restored %s; skipped (fresh) %s; not in checkpoint %s",
                 prefix, report["restored"], report["skipped"], report["missing"])
    return report
