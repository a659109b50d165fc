"""Does TNet's cost track its FLOPs? Every comparison of the performance
targets in one run, printed as ratios beside the raw ms/image and memory.

    python -m experiments.benchmark                       # about 10 min on 2 CPU cores
    python -m experiments.benchmark --json=/tmp/bench.json --plot=docs/benchmark_scaling.png
    python -m experiments.benchmark --smoke               # tiny models, under a minute

What is compared (inference unless said, float32, one `tf.function` per row,
--batch_size images per call):
  overhead_*: TNet divided by its backbone on the B x (1 + n) base-resolution
    images TNet runs through it, in one batch (fMoW TNet at 448 [2] and
    896 [2, 1]: EfficientNet-B0 on 3B / 5B images at 224; ImageNet TNet at
    224 [3]: BagNet-77 on 4B images at 77). Split in two by the backbone
    run as TNet runs it, one call per level (B, 2B, 2B images for [2, 1]):
    by_level_vs_one_batch_* is that over one batch, tnet_vs_by_level_* TNet
    over that (what everything but the backbone costs).
  speedup_vs_effnet_*: the EfficientNet-B0 baseline at 448 / 896 divided by
    TNet at the same input size.
  memory_vs_effnet_896: peak memory of TNet 896 [2, 1] over EN-B0 at 896, at
    --memory_batch_size (64), each in a fresh process (on a CPU the process
    peak RSS, the TensorFlow runtime included).
  cost_3584_vs_448: TNet processing 5 glimpses at 3584 ([1, 1, 1, 1]) over
    5 glimpses at 448 ([4]); the scaling rows also hold 896 [2, 1] and 1792
    [1, 1, 2], and EN-B0 at the same sizes, at --scaling_batch_size, with
    memory from fresh processes; they make the plot (--plot).
    backbone_by_level_3584_vs_448: the backbone alone, run level by level
    as TNet runs it at 3584 (5 calls of B images) and at 448 (B, then 4B).
  train_overhead_448_2: a TNet train step at 448 [2] over the baseline's
    train step (EN-B0 and the classifier, forward and backward, Adam) on
    3B images at 224.
  backbone_vs_handwritten: our EfficientNet-B0 (keras.applications weights
    and names) over a hand-written EN-B0 built here with the same weights
    ('same' padding, batch norm folded into the convolutions, one input
    affine); keras.applications' own model is timed beside them.
  xla_vs_default, mixed_vs_float32: TNet 448 [2] compiled with XLA, and under
    the mixed-precision policy of the device (mixed_bfloat16 on CPU/TPU,
    mixed_float16 on GPU), over the default; with their largest logit
    difference relative to the largest logit.

Timing: within each comparison the calls alternate between the rows
(--rounds rounds after --warmup_rounds), and each row reports the median, so
that load drifting on a shared machine hits every row alike. The EN-B0 rows
at 1792 and 3584 px run --slow_rounds rounds (each call takes seconds).
Targets that are missed are listed with the margin.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

FLAGS = flags.FLAGS
SCALING_BUDGETS = ((448, (4,)), (896, (2, 1)), (1792, (1, 1, 2)), (3584, (1, 1, 1, 1)))
SMOKE_SIZE = {448: 64, 896: 128, 1792: 256, 3584: 512, 224: 96}     # tiny models: base 32 px
SLOW_SIZES = (1792, 3584)
MEMORY_PREFIX = "BENCHMARK_MEMORY "

# (ratio key, what, target, "<=" or ">=")
TARGETS = (
    ("overhead_fmow_448_2", "TNet 448 [2] / EN-B0 on 3B images at 224", 1.05, "<="),
    ("overhead_fmow_896_2_1", "TNet 896 [2,1] / EN-B0 on 5B images at 224", 1.05, "<="),
    ("overhead_imagenet_3", "TNet 224 [3] / BagNet-77 on 4B images at 77", 1.05, "<="),
    ("speedup_vs_effnet_896", "EN-B0 at 896 / TNet 896 [2,1]", 4.0, ">="),
    ("speedup_vs_effnet_448", "EN-B0 at 448 / TNet 448 [2]", 1.0, ">="),
    ("memory_vs_effnet_896", "peak memory, TNet 896 [2,1] / EN-B0 896", 0.35, "<="),
    ("cost_3584_vs_448", "TNet 5 glimpses at 3584 / at 448", 1.2, "<="),
    ("train_overhead_448_2", "TNet train step 448 [2] / baseline on 3B at 224", 1.2, "<="),
    ("backbone_vs_handwritten", "our EN-B0 / hand-written EN-B0 at 224", 1.02, "<="),
)


@dataclasses.dataclass(frozen=True)
class Row:
    """A model to time or measure: kind tnet | baseline | backbone, on `images`
    images of `size` px per call (TNet: `locations`)."""

    kind: str
    preset: str
    size: int
    locations: Optional[Tuple[int, ...]] = None

    @property
    def name(self) -> str:
        budget = "" if self.locations is None else " [" + ",".join(map(str, self.locations)) + "]"
        return f"{self.kind} {self.preset} {self.size}{budget}"

    def spec(self) -> str:
        budget = "" if self.locations is None else ",".join(map(str, self.locations))
        return f"{self.kind}:{self.preset}:{self.size}:{budget}"

    @classmethod
    def from_spec(cls, text: str) -> "Row":
        kind, preset, size, budget = text.split(":")
        return cls(kind, preset, int(size),
                   tuple(int(k) for k in budget.split(",")) if budget else None)


def model_config(preset: str, smoke: bool, **overrides):
    """The preset's TNetConfig; with `smoke`, the tiny preset's model size."""
    import tnet_tf
    from tnet_tf.config import TINY_SIZE_FIELDS
    config = tnet_tf.get_preset(preset)
    if smoke:
        tiny = tnet_tf.get_preset("tiny")
        config = dataclasses.replace(config, **{f: getattr(tiny, f) for f in TINY_SIZE_FIELDS})
    return dataclasses.replace(config, **overrides)


def px(size: int, smoke: bool) -> int:
    """The input size standing for `size` px (smoke runs scale every size down)."""
    return SMOKE_SIZE[size] if smoke else size


def build(row: Row, smoke: bool):
    """(model, call kwargs, image size) of a row."""
    import tnet_tf
    from tnet_tf.backbones import build_backbone
    size = px(row.size, smoke)
    if row.kind == "tnet":
        config = model_config(row.preset, smoke, input_size=size, locations=row.locations)
        return tnet_tf.TNet(config), {"locations": list(row.locations)}, size
    config = model_config(row.preset, smoke)
    if row.kind == "baseline":
        return tnet_tf.Classifier(config, input_size=size), {}, size
    if row.kind == "backbone":
        base = config.base_resolution
        return build_backbone(config.backbone, base), {}, base
    raise ValueError(f"unknown row kind {row.kind!r}")


# ----------------------------------------------------------------------------
# Timing and memory


def median_times(calls: Dict[str, Tuple[Callable, object]], rounds: int, warmup: int,
                 slow: Sequence[str] = (), slow_rounds: int = 2) -> Dict[str, float]:
    """Median seconds per call of each `name: (fn, images)`, calls alternating.

    Each fn is called once untimed first (tracing), then `warmup` rounds are
    discarded; names in `slow` take part in the first `slow_rounds` rounds only.
    """
    from tnet_tf.measure import to_host
    for fn, images in calls.values():
        to_host(fn(images))
    seconds = {name: [] for name in calls}
    for index in range(warmup + rounds):
        for name, (fn, images) in calls.items():
            if name in slow and index >= warmup + slow_rounds:
                continue
            start = time.perf_counter()
            to_host(fn(images))
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def random_images(batch: int, size: int, seed: int = 0):
    import tensorflow as tf
    return tf.random.uniform([batch, size, size, 3], -1.0, 1.0, seed=seed)


def inference(model, **kwargs):
    import tensorflow as tf
    from tnet_tf.flops import inference_call
    return tf.function(inference_call(model, **kwargs))


def memory_row(row: Row, batch: int, smoke: bool) -> Dict[str, float]:
    """In this process: build, then one inference batch; the peaks in bytes."""
    import resource
    from tnet_tf.measure import measure_peak_memory
    model, kwargs, size = build(row, smoke)
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak, method = measure_peak_memory(model, (size, size, 3), batch, **kwargs)
    return {"peak_bytes": peak, "method": method, "idle_bytes": idle, "batch": batch}


def measure_memory_in_subprocess(row: Row, batch: int, smoke: bool) -> Dict[str, float]:
    """`memory_row` in a fresh Python process (peak RSS only grows). A row
    the kernel kills for memory gets peak_bytes None and "killed"."""
    command = [sys.executable, "-m", "experiments.benchmark", f"--memory_row={row.spec()}",
               f"--memory_batch_size={batch}"] + (["--smoke"] if smoke else [])
    result = subprocess.run(command, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith(MEMORY_PREFIX):
            return json.loads(line[len(MEMORY_PREFIX):])
    if result.returncode == -9:      # SIGKILL: the kernel's out-of-memory killer
        return {"peak_bytes": None, "method": "killed", "idle_bytes": None, "batch": batch,
                "killed": f"out of memory (the machine has {machine_memory() / 1e9:.1f} GB)"}
    raise RuntimeError(f"memory row {row.name} failed (exit {result.returncode}):\n"
                       f"{result.stderr[-3000:]}")


def machine_memory() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ----------------------------------------------------------------------------
# The comparisons


@dataclasses.dataclass
class Results:
    ms: Dict[str, float] = dataclasses.field(default_factory=dict)       # ms per image
    memory: Dict[str, dict] = dataclasses.field(default_factory=dict)
    ratios: Dict[str, float] = dataclasses.field(default_factory=dict)
    notes: Dict[str, str] = dataclasses.field(default_factory=dict)


def progress(text: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def compare_inference(results: Results, batch: int, rounds: int, warmup: int, smoke: bool):
    """TNet against its backbone on B x (1 + n) images and against EN-B0."""
    from tnet_tf import budget
    groups = [
        [Row("tnet", "fmow", 448, (2,)), Row("baseline", "fmow", 448)],
        [Row("tnet", "fmow", 896, (2, 1)), Row("baseline", "fmow", 896)],
        [Row("tnet", "imagenet", 224, (3,))],
    ]
    for group in groups:
        tnet_row = group[0]
        glimpses = 1 + budget.total_locations(tnet_row.locations)
        calls = {}       # every row in ms per TNet image: seconds per call / B
        tnet_model, kwargs, size = build(tnet_row, smoke)
        calls[tnet_row.name] = (inference(tnet_model, **kwargs), random_images(batch, size))
        backbone_name = f"backbone {tnet_row.preset} on {glimpses}B images"
        base = tnet_model.config.base_resolution
        calls[backbone_name] = (inference(tnet_model.backbone),
                                random_images(batch * glimpses, base))
        levels_name = f"backbone {tnet_row.preset} by level {level_batches(tnet_row.locations)}B"
        calls[levels_name] = by_level(tnet_model.backbone, batch, tnet_row.locations, base)
        for row in group[1:]:
            model, _, size = build(row, smoke)
            calls[row.name] = (inference(model), random_images(batch, size))
        progress(f"timing {', '.join(calls)}")
        seconds = median_times(calls, rounds, warmup)
        for name, value in seconds.items():
            results.ms[name] = value * 1e3 / batch
        key = {"fmow": f"fmow_{tnet_row.size}_" + "_".join(map(str, tnet_row.locations)),
               "imagenet": "imagenet_3"}[tnet_row.preset]
        results.ratios[f"overhead_{key}"] = seconds[tnet_row.name] / seconds[backbone_name]
        # The overhead's two parts: one backbone call per level instead of one
        # batch, and everything that is not the backbone.
        results.ratios[f"by_level_vs_one_batch_{key}"] = (seconds[levels_name]
                                                          / seconds[backbone_name])
        results.ratios[f"tnet_vs_by_level_{key}"] = seconds[tnet_row.name] / seconds[levels_name]
        if len(group) > 1:
            results.ratios[f"speedup_vs_effnet_{tnet_row.size}"] = (
                seconds[group[1].name] / seconds[tnet_row.name])


def level_batches(locations: Sequence[int]) -> List[int]:
    """Glimpses per image at each level of a budget: (2, 1) -> [1, 2, 2]."""
    counts = [1]
    for k in locations:
        if k == 0:
            break
        counts.append(counts[-1] * k)
    return counts


def by_level(backbone, batch: int, locations: Sequence[int], base: int):
    """(fn, images) running `backbone` as TNet does: one call per level, on
    B x (glimpses per image at that level) images, in one `tf.function`."""
    import tensorflow as tf
    images = [random_images(batch * count, base, seed=level)
              for level, count in enumerate(level_batches(locations))]
    return tf.function(lambda batches: [backbone(x, training=False) for x in batches]), images


def compare_backbones(results: Results, batch: int, rounds: int, warmup: int, smoke: bool):
    """Our EN-B0 against the hand-written one and keras.applications' own."""
    import numpy as np
    import tensorflow as tf
    from experiments import handwritten_efficientnet
    from tnet_tf.backbones import build_backbone
    size = px(224, smoke)
    config = model_config("fmow", False)
    ours = build_backbone(config.backbone, size)
    handwritten = handwritten_efficientnet.handwritten_efficientnet_b0(size)
    handwritten_efficientnet.fold_weights(handwritten, ours)
    images = random_images(batch, size)
    difference = max(float(np.max(np.abs(a - b)) / max(1e-6, np.max(np.abs(a))))
                     for a, b in zip(ours(images, training=False),
                                     handwritten(images, training=False)))
    results.notes["handwritten_max_relative_difference"] = f"{difference:.2e}"
    keras_model = tf.keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    larger = random_images(4 * batch, size)
    calls = {"our EN-B0": (inference(ours), images),
             "hand-written EN-B0": (inference(handwritten), images),
             "keras.applications EN-B0": (inference(keras_model), images),
             "our EN-B0, 4B": (inference(ours), larger),
             "hand-written EN-B0, 4B": (inference(handwritten), larger)}
    progress(f"timing {', '.join(calls)} at {size} px")
    seconds = median_times(calls, rounds, warmup)
    for name, value in seconds.items():
        results.ms[f"{name} {size}"] = value * 1e3 / (4 * batch if "4B" in name else batch)
    results.ratios["backbone_vs_handwritten"] = (seconds["our EN-B0"]
                                                 / seconds["hand-written EN-B0"])
    # A gap that shrinks at 4B is a cost per call (folding the batch norms into
    # the kernels, the input layers), not per image.
    results.ratios["backbone_vs_handwritten_4B"] = (seconds["our EN-B0, 4B"]
                                                    / seconds["hand-written EN-B0, 4B"])
    results.ratios["keras_applications_vs_ours"] = (seconds["keras.applications EN-B0"]
                                                    / seconds["our EN-B0"])
    return difference


def compare_training(results: Results, batch: int, rounds: int, warmup: int, smoke: bool):
    """A TNet train step at 448 [2] against the baseline's on 3B images at 224."""
    import tensorflow as tf
    import tnet_tf
    tnet_model, _, size = build(Row("tnet", "fmow", 448, (2,)), smoke)
    tnet_model.compile(tf.keras.optimizers.Adam(1e-4), locations=[2])
    base = tnet_model.config.base_resolution
    baseline = tnet_tf.Classifier(tnet_model.config, input_size=base)
    baseline.compile(tf.keras.optimizers.Adam(1e-4),
                     loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classes = tnet_model.config.num_classes

    def step(model, count, image_size):
        labels = tf.random.uniform([count], 0, classes, tf.int32, seed=1)
        fn = tf.function(lambda images: model.train_step((images, labels)))
        return fn, random_images(count, image_size)

    calls = {"TNet train step 448 [2]": step(tnet_model, batch, size),
             "baseline train step on 3B at 224": step(baseline, 3 * batch, base)}
    progress(f"timing {', '.join(calls)}")
    seconds = median_times(calls, rounds, warmup)
    for name, value in seconds.items():
        results.ms[name] = value * 1e3 / batch
    results.ratios["train_overhead_448_2"] = (seconds["TNet train step 448 [2]"]
                                              / seconds["baseline train step on 3B at 224"])


def scaling_rows() -> List[Row]:
    """TNet with 5 glimpses at 448..3584 px, then EN-B0 at the same sizes."""
    from tnet_tf import budget
    rows = []
    for size, locations in SCALING_BUDGETS:
        assert budget.total_locations(locations) == 4
        rows.append(Row("tnet", "fmow", size, locations))
    return rows + [Row("baseline", "fmow", size) for size, _ in SCALING_BUDGETS]


def compare_scaling(results: Results, batch: int, rounds: int, warmup: int, slow_rounds: int,
                    smoke: bool, memory: Dict[str, dict]) -> List[dict]:
    """Times the scaling rows; `memory` holds their memory rows by name."""
    rows = scaling_rows()
    calls = {}
    for row in rows:
        model, kwargs, size = build(row, smoke)
        calls[row.name] = (inference(model, **kwargs), random_images(batch, size))
        if row in (rows[0], rows[3]):    # the backbone as TNet runs it at 448 and 3584
            calls[f"backbone by level {row.locations}"] = by_level(
                model.backbone, batch, row.locations, model.config.base_resolution)
    slow = [row.name for row in rows if row.kind == "baseline" and row.size in SLOW_SIZES]
    progress(f"timing {len(rows)} scaling rows at batch {batch}")
    seconds = median_times(calls, rounds, warmup, slow, slow_rounds)
    table = []
    for row in rows:
        entry = {"model": row.kind, "size": row.size, "locations": row.locations,
                 "ms_per_image": seconds[row.name] * 1e3 / batch}
        results.ms[f"scaling {row.name}"] = entry["ms_per_image"]
        if row.name in memory:
            entry["memory"] = memory[row.name]
        table.append(entry)
    results.ratios["cost_3584_vs_448"] = seconds[rows[3].name] / seconds[rows[0].name]
    # The part of it that is the backbone alone, run level by level (5 levels against 2).
    results.ratios["backbone_by_level_3584_vs_448"] = (
        seconds[f"backbone by level {rows[3].locations}"]
        / seconds[f"backbone by level {rows[0].locations}"])
    for name in calls:
        if name.startswith("backbone by level"):
            results.ms[f"scaling {name}"] = seconds[name] * 1e3 / batch
    return table


def measure_memory(rows: Sequence[Row], batch: int, smoke: bool) -> Dict[str, dict]:
    """The memory rows, each in a fresh process; run before this process
    builds any model, so that they have the machine to themselves."""
    measured = {}
    for row in rows:
        progress(f"memory of {row.name} at batch {batch} (fresh process)")
        measured[row.name] = measure_memory_in_subprocess(row, batch, smoke)
    return measured


def compare_memory(results: Results, batch: int, smoke: bool) -> None:
    """TNet 896 [2, 1] against EN-B0 at 896. If EN-B0 is killed for memory,
    the ratio is an upper bound: TNet's peak over the machine's memory."""
    tnet_row, baseline_row = Row("tnet", "fmow", 896, (2, 1)), Row("baseline", "fmow", 896)
    results.memory.update(measure_memory([tnet_row, baseline_row], batch, smoke))
    tnet, baseline = results.memory[tnet_row.name], results.memory[baseline_row.name]
    if tnet["peak_bytes"] is None:
        raise RuntimeError(f"{tnet_row.name} at batch {batch}: {tnet['killed']}")
    if baseline["peak_bytes"] is None:
        results.ratios["memory_vs_effnet_896"] = tnet["peak_bytes"] / machine_memory()
        results.notes["memory_vs_effnet_896"] = (
            f"an upper bound: EN-B0 at 896 px, batch {batch}, was killed, "
            f"{baseline['killed']}; TNet's peak is divided by the machine's memory")
        return
    results.ratios["memory_vs_effnet_896"] = tnet["peak_bytes"] / baseline["peak_bytes"]


def compare_options(results: Results, batch: int, rounds: int, warmup: int, smoke: bool):
    """XLA and the device's mixed-precision policy against the default, TNet 448 [2]."""
    import numpy as np
    import tensorflow as tf
    from tnet_tf.flops import inference_call
    row = Row("tnet", "fmow", 448, (2,))
    default, kwargs, size = build(row, smoke)
    images = random_images(batch, size)
    reference = default(images, training=False, **kwargs)["logits"].numpy()
    xla_model, _, _ = build(row, smoke)
    xla_model(images[:1], training=False, **kwargs)
    xla_model.set_weights(default.get_weights())
    xla_model.xla_compatible = True
    policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        mixed, _, _ = build(row, smoke)
        mixed(images[:1], training=False, **kwargs)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(default.get_weights())
    calls = {"default": (inference(default, **kwargs), images),
             "XLA": (tf.function(inference_call(xla_model, **kwargs), jit_compile=True), images),
             policy: (inference(mixed, **kwargs), images)}
    progress(f"timing TNet 448 [2]: {', '.join(calls)}")
    seconds = median_times(calls, rounds, warmup)
    for name, value in seconds.items():
        results.ms[f"TNet 448 [2], {name}"] = value * 1e3 / batch
    scale = max(1e-6, float(np.max(np.abs(reference))))
    for name, key in (("XLA", "xla_vs_default"), (policy, "mixed_vs_float32")):
        logits = tf.cast(calls[name][0](images)["logits"], tf.float32).numpy()
        results.ratios[key] = seconds[name] / seconds["default"]
        results.notes[f"{key}_logit_difference"] = (
            f"{float(np.max(np.abs(logits - reference))) / scale:.2e}")
    results.notes["mixed_policy"] = policy


# ----------------------------------------------------------------------------
# Report


def target_lines(ratios: Dict[str, float]) -> List[str]:
    lines = []
    for key, what, target, sense in TARGETS:
        if key not in ratios:
            continue
        value = ratios[key]
        met = value <= target if sense == "<=" else value >= target
        margin = (value / target - 1) if sense == "<=" else (target / value - 1)
        verdict = "met" if met else f"MISSED by {100 * margin:.1f} %"
        lines.append(f"| {key} | {what} | {value:.3f} | {sense} {target} | {verdict} |")
    return lines


def report(results: Results, scaling: List[dict], settings: dict) -> str:
    lines = ["| ratio | what | value | target | |", "|---|---|---|---|---|"]
    lines += target_lines(results.ratios)
    for key in sorted(set(results.ratios) - {t[0] for t in TARGETS}):
        lines.append(f"| {key} | (reported) | {results.ratios[key]:.3f} | - | |")
    lines += ["", "| row | ms/image |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in results.ms.items()]
    if results.memory or any("memory" in entry for entry in scaling):
        lines += ["", "| memory row | batch | peak GB | idle GB | method |", "|---|---|---|---|---|"]
        entries = [(name, m) for name, m in results.memory.items()]
        entries += [(f"scaling {e['model']} {e['size']}", e["memory"]) for e in scaling
                    if "memory" in e]
        for name, m in entries:
            if m["peak_bytes"] is None:
                lines.append(f"| {name} | {m['batch']} | killed: {m['killed']} | - | - |")
                continue
            lines.append(f"| {name} | {m['batch']} | {m['peak_bytes'] / 1e9:.2f} | "
                         f"{m['idle_bytes'] / 1e9:.2f} | {m['method']} |")
    if results.notes:
        lines += [""] + [f"- {key}: {value}" for key, value in results.notes.items()]
    lines += ["", "settings: " + json.dumps(settings, sort_keys=True)]
    return "\n".join(lines)


def scaling_plot(scaling: List[dict], path: str) -> str:
    """ms/image and peak memory against image size, TNet (5 glimpses) and EN-B0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with_memory = all("memory" in entry for entry in scaling)
    figure, axes = plt.subplots(1, 2 if with_memory else 1, figsize=(10 if with_memory else 5, 4),
                                squeeze=False)
    for model, label, marker in (("tnet", "TNet, 5 glimpses", "o"),
                                 ("baseline", "EfficientNet-B0", "s")):
        entries = [e for e in scaling if e["model"] == model]
        sizes = [e["size"] for e in entries]
        axes[0, 0].plot(sizes, [e["ms_per_image"] for e in entries], marker=marker, label=label)
        if with_memory:
            measured = [e for e in entries if e["memory"]["peak_bytes"] is not None]
            axes[0, 1].plot([e["size"] for e in measured],
                            [e["memory"]["peak_bytes"] / 1e9 for e in measured],
                            marker=marker, label=label)
    titles = ("inference time", "peak memory (fresh process)")
    units = ("ms / image", "GB")
    for index, axis in enumerate(axes[0]):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks([e["size"] for e in scaling if e["model"] == "tnet"])
        axis.set_xticklabels([str(e["size"]) for e in scaling if e["model"] == "tnet"])
        axis.set_xlabel("image size (px)")
        axis.set_ylabel(units[index])
        axis.set_title(titles[index])
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    for name in ("batch_size", "rounds", "slow_rounds", "scaling_batch_size",
                 "memory_batch_size"):
        if getattr(FLAGS, name) < 1:
            sys.exit(f"error: --{name}: {getattr(FLAGS, name)} must be >= 1")
    if FLAGS.warmup_rounds < 0:
        sys.exit(f"error: --warmup_rounds: {FLAGS.warmup_rounds} must be >= 0")
    if FLAGS.memory_row:
        print(MEMORY_PREFIX + json.dumps(memory_row(Row.from_spec(FLAGS.memory_row),
                                                    FLAGS.memory_batch_size, FLAGS.smoke)))
        return
    import tensorflow as tf
    started = time.time()
    smoke, batch, rounds, warmup = FLAGS.smoke, FLAGS.batch_size, FLAGS.rounds, FLAGS.warmup_rounds
    results = Results()
    scaling_memory = {}
    if FLAGS.memory:    # first, while this process holds no model
        compare_memory(results, FLAGS.memory_batch_size, smoke)
        scaling_memory = measure_memory(scaling_rows(), FLAGS.scaling_batch_size, smoke)
    compare_inference(results, batch, rounds, warmup, smoke)
    compare_backbones(results, batch, rounds, warmup, smoke)
    compare_training(results, batch, rounds, warmup, smoke)
    if FLAGS.options:
        compare_options(results, batch, rounds, warmup, smoke)
    scaling = compare_scaling(results, FLAGS.scaling_batch_size, rounds, warmup,
                              FLAGS.slow_rounds, smoke, scaling_memory)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
    settings = {"batch_size": batch, "rounds": rounds, "warmup_rounds": warmup,
                "slow_rounds": FLAGS.slow_rounds, "scaling_batch_size": FLAGS.scaling_batch_size,
                "memory_batch_size": FLAGS.memory_batch_size, "smoke": smoke,
                "devices": devices or ["CPU"], "cpu_count": os.cpu_count(),
                "seconds": round(time.time() - started, 1)}
    print(report(results, scaling, settings))
    if FLAGS.plot:
        print(f"wrote {scaling_plot(scaling, FLAGS.plot)}")
    if FLAGS.json:
        payload = {"ratios": results.ratios, "ms_per_image": results.ms,
                   "memory": results.memory, "scaling": scaling, "notes": results.notes,
                   "settings": settings,
                   "targets": {key: {"target": target, "sense": sense}
                               for key, _, target, sense in TARGETS}}
        with open(FLAGS.json, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
        print(f"wrote {FLAGS.json}")


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this
    module beside another entry point defines nothing)."""
    flags.DEFINE_integer("batch_size", 8, "Images per call (TNet batch B).")
    flags.DEFINE_integer("rounds", 5, "Timed rounds per comparison (median reported).")
    flags.DEFINE_integer("warmup_rounds", 1, "Untimed rounds before timing (after tracing).")
    flags.DEFINE_integer("slow_rounds", 2, "Timed rounds of EN-B0 at 1792 and 3584 px.")
    flags.DEFINE_integer("scaling_batch_size", 2, "Images per call in the scaling rows.")
    flags.DEFINE_integer("memory_batch_size", 64, "Batch of the 896 px memory comparison.")
    flags.DEFINE_bool("memory", True, "Measure peak memory (fresh processes).")
    flags.DEFINE_bool("options", True, "Measure XLA and mixed precision.")
    flags.DEFINE_bool("smoke", False, "Tiny models and sizes, to test the benchmark itself.")
    flags.DEFINE_string("json", None, "Write ratios and rows to this JSON file.")
    flags.DEFINE_string("plot", "runs/benchmark/scaling.png", "Scaling plot (PNG).")
    flags.DEFINE_string("memory_row", None, "Internal: measure one memory row and print it.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
