"""The TFRecord Example schema: feature keys, encoding and parsing.

This is the one place that names the keys. The `data_prep` converters write
with `encode_example`; the `tnet_tf.data` readers parse with
`parse_example`. The keys are those of the authors' converters, so their
TFRecords are read as well as ours:

    image/encoded            JPEG bytes (always RGB JPEG in our records)
    image/format             b"JPEG"
    image/filename           path of the source image, relative to the raw root
    image/height, image/width, image/channels   int64, of the stored image
    image/colorspace         b"RGB"
    image/class/label        int64 class index
    image/class/text         class name
    image/object/bbox/{ymin,xmin,ymax,xmax}   float lists, normalised to [0, 1]
    image/object/bbox/label  int64 list, the class index of each box

Shards are named `<prefix>-<index:05d>-of-<count:05d>`, e.g.
`train-00000-of-00512`, `validation-00000-of-00128`.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import tensorflow as tf

ENCODED = "image/encoded"
FORMAT = "image/format"
FILENAME = "image/filename"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
COLORSPACE = "image/colorspace"
LABEL = "image/class/label"
TEXT = "image/class/text"
BOX_YMIN = "image/object/bbox/ymin"
BOX_XMIN = "image/object/bbox/xmin"
BOX_YMAX = "image/object/bbox/ymax"
BOX_XMAX = "image/object/bbox/xmax"
BOX_LABEL = "image/object/bbox/label"

BOX_KEYS = (BOX_YMIN, BOX_XMIN, BOX_YMAX, BOX_XMAX)

# Only the image and its label are required; the rest default, so records
# written without boxes or metadata parse too.
FEATURE_SPEC = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=b"JPEG"),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    CHANNELS: tf.io.FixedLenFeature([], tf.int64, default_value=3),
    COLORSPACE: tf.io.FixedLenFeature([], tf.string, default_value=b"RGB"),
    TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    BOX_YMIN: tf.io.VarLenFeature(tf.float32),
    BOX_XMIN: tf.io.VarLenFeature(tf.float32),
    BOX_YMAX: tf.io.VarLenFeature(tf.float32),
    BOX_XMAX: tf.io.VarLenFeature(tf.float32),
    BOX_LABEL: tf.io.VarLenFeature(tf.int64),
}

# (ymin, xmin, ymax, xmax) normalised to [0, 1], and the box's class index.
Box = Tuple[float, float, float, float]


def shard_name(prefix: str, index: int, count: int) -> str:
    """`train-00003-of-00512`."""
    return f"{prefix}-{index:05d}-of-{count:05d}"


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def encode_example(jpeg: bytes, height: int, width: int, label: int, text: str,
                   filename: str, boxes: Sequence[Box] = (),
                   box_labels: Sequence[int] = ()) -> bytes:
    """Serialises one RGB JPEG image with its label and boxes (deterministic bytes)."""
    if len(boxes) != len(box_labels):
        raise ValueError(f"{filename}: {len(boxes)} boxes but {len(box_labels)} box labels")
    features = {
        ENCODED: _bytes([jpeg]),
        FORMAT: _bytes([b"JPEG"]),
        FILENAME: _bytes([filename.encode()]),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        CHANNELS: _ints([3]),
        COLORSPACE: _bytes([b"RGB"]),
        LABEL: _ints([label]),
        TEXT: _bytes([text.encode()]),
        BOX_LABEL: _ints(box_labels),
    }
    for position, key in enumerate(BOX_KEYS):
        features[key] = _floats([box[position] for box in boxes])
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Parses one serialised Example (usable inside `tf.data.Dataset.map`).

    Returns a dict with "encoded" (string), "label" (int32), "text",
    "filename", "height", "width" (int32), "boxes" (float32 [n, 4] as
    ymin, xmin, ymax, xmax) and "box_labels" (int32 [n]). Records without
    box labels get the image label for each box.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    boxes = tf.stack([tf.sparse.to_dense(parsed[key]) for key in BOX_KEYS], axis=-1)
    label = tf.cast(parsed[LABEL], tf.int32)
    box_labels = tf.cast(tf.sparse.to_dense(parsed[BOX_LABEL]), tf.int32)
    num_boxes = tf.shape(boxes)[0]
    box_labels = tf.cond(tf.shape(box_labels)[0] == num_boxes,
                         lambda: box_labels, lambda: tf.fill([num_boxes], label))
    return {
        "encoded": parsed[ENCODED],
        "label": label,
        "text": parsed[TEXT],
        "filename": parsed[FILENAME],
        "height": tf.cast(parsed[HEIGHT], tf.int32),
        "width": tf.cast(parsed[WIDTH], tf.int32),
        "boxes": tf.reshape(boxes, [-1, 4]),
        "box_labels": box_labels,
    }
