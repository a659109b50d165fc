"""tf.data input pipelines over the sharded TFRecords of `data_prep`.

    config = InputConfig(file_pattern="/data/fmow/train-*", image_size=448,
                         batch_size=64, training=True, seed=0)
    skipped = new_skip_counter()
    dataset = make_dataset(config, skipped=skipped)     # (image, label) batches
    model.fit(dataset, steps_per_epoch=..., callbacks=[SkippedRecordsLogger(skipped)])

Images are float32 [batch, size, size, 3] in [-1, 1]; labels int32 [batch].
Training: files shuffled and interleaved, records shuffled, the B.2
augmentation (`augment.train_jpeg`, decoding only the sampled crop),
infinite repeat, full batches. Evaluation: one pass in file order, the
per-dataset resize, a final partial batch kept. The training stages read
`make_dataset(config, context, skipped, Epochs(...))`: such batches,
laid out per epoch so that a resumed run fast-forwards to where it stopped.

Bad data: a record whose image is not a complete JPEG is skipped, counted
and logged with its shard and index; a corrupt or truncated shard (the
bytes read do not add up to the file size) is counted once and logged, the
rest of that shard being unreadable. With `strict=True` either stops the
run with an error naming the shard.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Optional

import tensorflow as tf

from tnet_tf.data import augment, boxes as box_lib, schema

AUTOTUNE = tf.data.AUTOTUNE
# TFRecord framing: 8-byte length, 4-byte length CRC, payload, 4-byte payload CRC.
RECORD_OVERHEAD = 16
# Evaluation crops per dataset: None resizes the whole image. Every dataset
# does, ImageNet included: the authors' ImageNet evaluation resizes the whole
# image to 224 px (no central crop) for TNet and BagNet-77 alike.
CACHES = ("records", "decoded")   # InputConfig.cache
EVAL_CENTRAL_FRACTION = {"fmow": None, "imagenet": None, "cub": None, "nabirds": None,
                         "digits": None, "megapixel_mnist": None}
# Datasets whose whole-image resize is antialiased: Megapixel MNIST's 2-3 px strokes
# vanish between the samples of a plain bilinear 1500 -> 512 px resize.
ANTIALIASED = ("megapixel_mnist",)
# The padding of `InputConfig.object_boxes`: larger than the image, so no glimpse holds it.
NO_BOX = (-1.0, -1.0, 2.0, 2.0)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What to read and how.

    Attributes:
      file_pattern: glob of the shards, e.g. "/data/fmow/train-*"; several
        globs may be joined by commas.
      image_size: side of the output images.
      batch_size: global batch size (divided among replicas by the input context).
      training: augmentation, shuffling and repetition if True.
      augment: apply the B.2 augmentation in training (False: the evaluation
        resize, e.g. for digits, whose identity a flip can change).
      eval_central_fraction: evaluation crop before resizing; None = whole image.
      crop_to_boxes: the bbox baseline: one example per box, cropped with the
        context margins of `boxes.add_context`, labelled by the box's label.
      crop_around_boxes: training crops cover at least 10 % of the record's
        boxes (Inception style) instead of 10 % of the whole image.
      shuffle_buffer: records in the shuffle buffer (training).
      seed: seeds file order, shuffling and augmentation; None = random.
      deterministic: keep the element order fixed despite parallelism;
        None = in evaluation only.
      repeat, drop_remainder: default to `training`.
      cycle_length: shards read at once.
      strict: stop at the first bad record or shard instead of skipping it.
      label_offset: subtracted from stored labels (1 for 1-based records).
      cache: keep the training set in memory after one ordered pass, then
        shuffle the cached examples with `shuffle_buffer` each pass and
        repeat them. None: read the shards every pass. "records": the
        parsed records, images still JPEG-encoded (memory: about the size
        of the shards; each pass decodes again). "decoded": the decoded
        uint8 images (height x width x 3 bytes each; no decoding after the
        first pass). Both give the same examples in the same order.
      with_object_box: evaluation only: yield (image, label, box), `box` [4]
        the record's first object box (edge-normalised y1, x1, y2, x2; the
        whole image if it has none), e.g. to score where TNet looked.
      object_boxes: with_object_box: how many boxes to yield. 1: `box` [4]
        as above; more: `boxes` [object_boxes, 4], the record's first ones,
        padded with `NO_BOX` (a box no glimpse holds), e.g. the 3 target
        digits of a Megapixel-MNIST canvas.
      antialias: the whole-image resize (no augmentation) is antialiased.
    """

    file_pattern: str
    image_size: int = 448
    batch_size: int = 64
    training: bool = True
    augment: bool = True
    eval_central_fraction: Optional[float] = None
    crop_to_boxes: bool = False
    crop_around_boxes: bool = False
    shuffle_buffer: int = 4096
    seed: Optional[int] = None
    deterministic: Optional[bool] = None
    repeat: Optional[bool] = None
    drop_remainder: Optional[bool] = None
    cycle_length: int = 16
    strict: bool = False
    label_offset: int = 0
    cache: Optional[str] = None
    with_object_box: bool = False
    object_boxes: int = 1
    antialias: bool = False

    def __post_init__(self):
        if self.image_size < 1 or self.batch_size < 1:
            raise ValueError(f"image_size and batch_size must be >= 1, got {self.image_size} "
                             f"and {self.batch_size}")
        fraction = self.eval_central_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"eval_central_fraction must be in (0, 1], got {fraction}")
        if self.object_boxes < 1:
            raise ValueError(f"object_boxes must be >= 1, got {self.object_boxes}")
        if self.cache not in (None, *CACHES):
            raise ValueError(f"cache must be None or one of {', '.join(CACHES)}; "
                             f"got {self.cache!r}")
        if self.cache and self.crop_to_boxes:
            raise ValueError("cache does not support crop_to_boxes")
        if self.with_object_box and (self.training or self.crop_to_boxes or
                                     fraction not in (None, 1.0)):
            raise ValueError("with_object_box needs the whole-image evaluation resize: "
                             "training, crop_to_boxes and eval_central_fraction move the box")

    @property
    def ordered(self) -> bool:
        """Whether element order is deterministic (`deterministic`, default: not training)."""
        return (not self.training) if self.deterministic is None else self.deterministic


def input_config_for(dataset: str, **fields) -> InputConfig:
    """An InputConfig with the evaluation resize of `dataset` (fmow, imagenet, cub, nabirds)."""
    if dataset not in EVAL_CENTRAL_FRACTION:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of "
                         f"{', '.join(EVAL_CENTRAL_FRACTION)}")
    fields.setdefault("eval_central_fraction", EVAL_CENTRAL_FRACTION[dataset])
    fields.setdefault("antialias", dataset in ANTIALIASED)
    return InputConfig(**fields)


def new_skip_counter() -> tf.Variable:
    """An int64 counter of skipped records and shards (create it outside a strategy scope)."""
    with tf.init_scope():
        return tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")


class SkippedRecordsLogger(tf.keras.callbacks.Callback):
    """Logs the skip counter after each epoch and adds it to the epoch logs."""

    def __init__(self, skipped: tf.Variable):
        super().__init__()
        self.skipped = skipped

    def on_epoch_end(self, epoch, logs=None):
        count = int(self.skipped.numpy())
        if logs is not None:
            logs["skipped_records"] = count
        if count:
            logging.getLogger("tnet_tf.data").warning(
                "epoch %d: %d bad records or shards skipped so far", epoch + 1, count)


def list_shards(file_pattern: str):
    """Sorted shard paths matching the comma-separated globs; an error names an empty glob."""
    files = []
    for pattern in file_pattern.split(","):
        matched = tf.io.gfile.glob(pattern.strip())
        if not matched:
            raise FileNotFoundError(f"file_pattern: no file matches {pattern.strip()!r}")
        files.extend(matched)
    return sorted(set(files))


@dataclasses.dataclass(frozen=True)
class Epochs:
    """Training input laid out as `fit`'s epochs, so that a resumed run reads
    exactly the batches the uninterrupted run would have read.

    Epoch e is shuffled and augmented with seeds drawn from (seed, e) only,
    and the element order is deterministic; a run resumed at (`start_epoch`,
    `start_step`) (`checkpoints.resume_position`) starts the stream there,
    skipping the parsed records of the steps already trained before any
    image is decoded: no example of the interrupted epoch is seen twice.
    Epochs hold `steps` global steps; the stream ends with epoch `count`.
    """

    steps: int
    count: int
    start_epoch: int = 0
    start_step: int = 0


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s file order, shuffling and augmentation."""
    return seed * 100_003 + epoch


def make_dataset(config: InputConfig,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 skipped: Optional[tf.Variable] = None,
                 epochs: Optional[Epochs] = None) -> tf.data.Dataset:
    """(image, label) batches from the TFRecords of `config.file_pattern`.

    With an `input_context` (from `strategy.distribute_datasets_from_function`)
    each host reads its own share of the shards and batches per replica.
    With `epochs` (training only) the stream is laid out epoch by epoch as
    `Epochs` says, and ends with the last epoch.
    """
    files = list_shards(config.file_pattern)
    pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync // pipelines
    shard_files = pipelines > 1 and len(files) >= pipelines
    if shard_files:
        files = files[pipeline_id::pipelines]
    record_shard = (pipelines, pipeline_id) if pipelines > 1 and not shard_files else None
    sizes = [tf.io.gfile.stat(path).length for path in files]
    batch_size = config.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
    if epochs is not None:
        if not config.training or config.seed is None:
            raise ValueError("epochs: the epoch layout needs training=True and a seed")
        config = dataclasses.replace(config, deterministic=True)

    def read(seed, shuffle, repeat):
        return _parsed_examples(config, files, sizes, skipped, record_shard, seed, shuffle,
                                repeat)

    if config.cache:      # one ordered pass, cached; shuffled per pass
        cached = read(config.seed, False, False)
        cached = (_decode_and_cache(cached, config) if config.cache == "decoded"
                  else cached.cache())

        def examples(seed):
            ordered = cached.shuffle(config.shuffle_buffer, seed=seed) if config.training \
                else cached
            return ordered.repeat() if _repeat(config) else ordered
    else:
        def examples(seed):
            return read(seed, config.training, _repeat(config))

    if epochs is None:
        return preprocess_and_batch(examples(config.seed), config, batch_size)

    def one_epoch(epoch: int, start_step: int):
        # A global step takes one per-replica batch for each of this pipeline's replicas.
        seed = epoch_seed(config.seed, epoch)
        batches = preprocess_and_batch(examples(seed), config, batch_size, seed=seed,
                                       skip=start_step * replicas * batch_size)
        return batches.take((epochs.steps - start_step) * replicas)

    first = epochs.start_epoch
    stream = one_epoch(first, epochs.start_step)
    for epoch in range(first + 1, epochs.count):
        stream = stream.concatenate(one_epoch(epoch, 0))
    return stream


def _parsed_examples(config: InputConfig, files, sizes, skipped, record_shard, seed,
                     shuffle: bool, repeat: bool) -> tf.data.Dataset:
    """The valid parsed records of `files`, shuffled with `seed` if `shuffle`."""
    file_ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        file_ds = file_ds.repeat()
    records = file_ds.interleave(
        lambda path, size: read_shard(path, size, config.strict, skipped),
        cycle_length=max(1, min(config.cycle_length, len(files))),
        num_parallel_calls=AUTOTUNE, deterministic=config.ordered)
    if record_shard is not None:
        records = records.shard(*record_shard)
    if shuffle:
        records = records.shuffle(config.shuffle_buffer, seed=seed)
    examples = records.map(lambda record, path, index: _parse_checked(
        record, path, index, config, skipped), num_parallel_calls=AUTOTUNE,
        deterministic=config.ordered)
    return examples.filter(lambda example: example["valid"])


def _decode_and_cache(examples: tf.data.Dataset, config: InputConfig) -> tf.data.Dataset:
    examples = examples.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if not config.strict:
        examples = examples.ignore_errors(log_warning=True)
    return examples.cache()


def preprocess_and_batch(examples: tf.data.Dataset, config: InputConfig, batch_size: int,
                         seed: Optional[int] = None, skip: int = 0) -> tf.data.Dataset:
    """Decodes, augments or resizes, batches and prefetches parsed examples.

    `examples` yields dicts with "encoded" (JPEG bytes), "label", "boxes"
    [n, 4] and "box_labels" [n] (see `schema.parse_example`). Augmentation
    seeds come from `seed` (default `config.seed`); the first `skip`
    examples are dropped before they are decoded.
    """
    if config.crop_to_boxes:
        examples = examples.flat_map(_one_example_per_box)
    seeds = tf.data.Dataset.random(seed=config.seed if seed is None else seed).batch(2)
    paired = tf.data.Dataset.zip((examples, seeds))
    if skip:
        paired = paired.skip(skip)
    images = paired.map(lambda example, seed: _preprocess(example, seed, config),
                        num_parallel_calls=AUTOTUNE, deterministic=config.ordered)
    if not config.strict:
        images = images.ignore_errors(log_warning=True)
    drop = config.training if config.drop_remainder is None else config.drop_remainder
    batched = images.batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = config.ordered
    return batched.with_options(options)


def read_shard(path, size, strict: bool, skipped: Optional[tf.Variable] = None):
    """(record, path, index) of one shard; a corrupt or short shard is logged and counted.

    The bytes of the records read (plus their framing) must add up to the
    file size; if not, the shard is corrupt or truncated past the last
    readable record.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors()
    tagged = records.enumerate().map(lambda index, record: (record, index, False))
    tagged = tagged.concatenate(tf.data.Dataset.from_tensors(
        (tf.constant(b""), tf.constant(-1, tf.int64), True)))

    def count_bytes(consumed, element):
        record, index, is_end = element
        length = tf.cast(tf.strings.length(record), tf.int64) + RECORD_OVERHEAD
        consumed += tf.where(is_end, tf.constant(0, tf.int64), length)
        return consumed, (record, index, is_end, consumed)

    def keep(record, index, is_end, consumed):
        incomplete = tf.logical_and(is_end, tf.not_equal(consumed, size))
        message = ["corrupt or truncated TFRecord shard", path, "read", consumed,
                   "of", size, "bytes"]
        _report_bad(incomplete, message, strict, skipped)
        return tf.logical_not(is_end)

    stream = tagged.scan(tf.constant(0, tf.int64), count_bytes).filter(keep)
    return stream.map(lambda record, index, is_end, consumed: (record, path, index))


def jpeg_is_complete(encoded):
    """True if the bytes start with a JPEG SOI marker and hold an EOI marker near the end."""
    length = tf.strings.length(encoded)
    tail = tf.io.decode_raw(tf.strings.substr(encoded, tf.maximum(length - 1024, 0),
                                              tf.minimum(length, 1024)), tf.uint8)
    tail = tf.cast(tail, tf.int32)
    has_end = tf.reduce_any(tf.logical_and(tail[:-1] == 0xFF, tail[1:] == 0xD9))
    starts = tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8")
    return tf.logical_and(tf.logical_and(length >= 4, starts), has_end)


def _parse_checked(record, path, index, config: InputConfig, skipped):
    example = schema.parse_example(record)
    example["label"] = example["label"] - config.label_offset
    example["box_labels"] = example["box_labels"] - config.label_offset
    valid = jpeg_is_complete(example["encoded"])
    _report_bad(tf.logical_not(valid), ["record", index, "of shard", path,
                                        "holds no complete JPEG image"], config.strict, skipped)
    return {key: example[key] for key in ("encoded", "label", "boxes", "box_labels")} | {
        "valid": valid}


def _report_bad(is_bad, message, strict: bool, skipped: Optional[tf.Variable]):
    """Stops (strict) or prints and counts when `is_bad`; runs inside tf.data functions."""
    if strict:
        tf.debugging.Assert(tf.logical_not(is_bad), message, summarize=1)
        return

    def warn():
        tf.print("WARNING tnet_tf.data: skipped", *message, output_stream=sys.stderr)
        if skipped is not None:
            skipped.assign_add(1)
        return tf.constant(True)

    tf.cond(is_bad, warn, lambda: tf.constant(False))


def _one_example_per_box(example):
    count = tf.shape(example["boxes"])[0]
    return tf.data.Dataset.from_tensor_slices({
        "encoded": tf.fill([count], example["encoded"]),
        "label": example["box_labels"],
        "boxes": box_lib.add_context(example["boxes"])[:, None, :],
        "box_labels": example["box_labels"][:, None],
    })


def _decode(example):
    """The example with its JPEG bytes replaced by the decoded uint8 image."""
    decoded = {key: value for key, value in example.items() if key != "encoded"}
    decoded["image"] = tf.io.decode_jpeg(example["encoded"], channels=3)
    return decoded


def _preprocess(example, seed, config: InputConfig):
    size = config.image_size
    if "image" in example:     # decoded already (cache="decoded")
        image = example["image"]
        if config.training and config.augment:
            crop_boxes = example["boxes"] if config.crop_around_boxes else None
            image = augment.train_image(image, size, seed, crop_boxes)
        else:
            image = augment.eval_image(image, size, config.eval_central_fraction,
                                       config.antialias)
        return _outputs(image, example, config)
    encoded = example["encoded"]
    if config.crop_to_boxes:
        # `boxes` holds the one context window of this example.
        shape = tf.image.extract_jpeg_shape(encoded)
        window = box_lib.pixel_window(example["boxes"][0], shape[0], shape[1])
        image = tf.image.decode_and_crop_jpeg(encoded, tf.stack(window), channels=3)
        if config.training and config.augment:
            image = augment.train_image(image, size, seed)
        else:
            image = augment.eval_image(image, size, config.eval_central_fraction,
                                       config.antialias)
    elif config.training and config.augment:
        crop_boxes = example["boxes"] if config.crop_around_boxes else None
        image = augment.train_jpeg(encoded, size, seed, crop_boxes)
    else:
        image = augment.eval_image(tf.io.decode_jpeg(encoded, channels=3), size,
                                   config.eval_central_fraction, config.antialias)
    return _outputs(image, example, config)


def _outputs(image, example, config: InputConfig):
    size = config.image_size
    image = tf.ensure_shape(image, [size, size, 3])
    if config.with_object_box and config.object_boxes > 1:
        count = config.object_boxes
        padding = tf.tile(tf.constant([NO_BOX]), [count, 1])
        boxes = tf.concat([example["boxes"][:count], padding], axis=0)[:count]
        return image, example["label"], tf.ensure_shape(boxes, [count, 4])
    if config.with_object_box:
        boxes = tf.concat([example["boxes"], tf.constant([[0.0, 0.0, 1.0, 1.0]])], axis=0)
        return image, example["label"], boxes[0]
    return image, example["label"]


def _repeat(config: InputConfig) -> bool:
    return config.training if config.repeat is None else config.repeat
