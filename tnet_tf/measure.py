"""Time per image and peak memory of a model at inference, by the paper's
protocol (batches of images, warm-up batches discarded). `fn` is called as in
`tnet_tf.flops`.
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tnet_tf.flops import check_input_shape, inference_call

MEMORY_DEVICE_PEAK = "tensorflow_device_peak"
MEMORY_PROCESS_RSS = "process_peak_rss"


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def _random_batch(input_shape, batch_size: int) -> tf.Tensor:
    shape = check_input_shape(input_shape)
    return tf.random.uniform([batch_size, *shape], -1.0, 1.0, seed=0)


def to_host(outputs) -> None:
    """Waits for the outputs by copying every tensor among them to the host."""
    for tensor in tf.nest.flatten(outputs):
        if isinstance(tensor, tf.Tensor):
            tensor.numpy()


def measure_time(fn: Callable, input_shape: Sequence[int], batch_size: int = 64,
                 num_batches: int = 200, warmup_batches: int = 10,
                 **call_kwargs) -> Tuple[float, float]:
    """Inference time per image in milliseconds: (mean, std over batches).

    Runs the inference call inside one `tf.function` on a fixed random batch
    in [-1, 1]. The first `warmup_batches` runs (tracing, autotuning) are
    discarded; each of the next `num_batches` runs is timed until its outputs
    are copied to the host, so asynchronous GPU work is included.
    """
    _check_positive("batch_size", batch_size)
    _check_positive("num_batches", num_batches)
    _check_positive("warmup_batches", warmup_batches, minimum=0)
    images = _random_batch(input_shape, batch_size)
    infer = tf.function(inference_call(fn, **call_kwargs))
    for _ in range(warmup_batches):
        to_host(infer(images))
    per_image_ms = []
    for _ in range(num_batches):
        start = time.perf_counter()
        to_host(infer(images))
        per_image_ms.append((time.perf_counter() - start) * 1e3 / batch_size)
    return float(np.mean(per_image_ms)), float(np.std(per_image_ms))


def _accelerator() -> Optional[str]:
    for kind in ("GPU", "TPU"):
        if tf.config.list_logical_devices(kind):
            return f"{kind}:0"
    return None


def measure_peak_memory(fn: Callable, input_shape: Sequence[int], batch_size: int = 64,
                        **call_kwargs) -> Tuple[int, str]:
    """Peak memory of one inference batch: (bytes, method).

    On a GPU / TPU the device allocator's peak after
    `tf.config.experimental.reset_memory_stats` (method
    "tensorflow_device_peak": weights plus activations of the batch). On CPU,
    where TensorFlow keeps no allocator statistics, the process peak resident
    set size (method "process_peak_rss"): it includes the TensorFlow runtime,
    the weights and everything the process did before, since the peak never
    goes down; run it in a fresh process for a clean number.
    """
    _check_positive("batch_size", batch_size)
    images = _random_batch(input_shape, batch_size)
    infer = tf.function(inference_call(fn, **call_kwargs))
    device = _accelerator()
    if device is not None:
        try:
            to_host(infer(images))  # trace and allocate outside the measured run
            tf.config.experimental.reset_memory_stats(device)
            to_host(infer(images))
            return int(tf.config.experimental.get_memory_info(device)["peak"]), MEMORY_DEVICE_PEAK
        except (ValueError, tf.errors.OpError):
            pass  # allocator statistics unsupported: fall back to the process peak
    to_host(infer(images))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024), MEMORY_PROCESS_RSS
