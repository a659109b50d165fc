"""Box geometry shared by the converters and the readers.

Boxes are (ymin, xmin, ymax, xmax) normalised to [0, 1]. The context rule is
that of the fMoW bounding-box baseline (replication.md, section 4): per
dimension, a box covering a fraction r of the image grows by

    r >= 0.5: 15 %, [0.4, 0.5): 20 %, [0.3, 0.4): 30 %, [0.2, 0.3): 50 %,
    [0.1, 0.2): 100 %, r < 0.1: 200 %

of its own size, half on each side, clipped to the image.
"""
from __future__ import annotations

import tensorflow as tf

# (lower bound of the size ratio, added fraction), highest bound first.
CONTEXT_STEPS = ((0.5, 0.15), (0.4, 0.2), (0.3, 0.3), (0.2, 0.5), (0.1, 1.0), (0.0, 2.0))


def context_fraction(ratio):
    """The fraction of its size by which a box grows, for a size ratio in [0, 1]."""
    ratio = tf.convert_to_tensor(ratio, tf.float32)
    fraction = tf.fill(tf.shape(ratio), CONTEXT_STEPS[-1][1])
    for lower, added in reversed(CONTEXT_STEPS[:-1]):
        fraction = tf.where(ratio >= lower, added, fraction)
    return fraction


def add_context(boxes):
    """Grows normalised boxes [..., 4] by the context rule, clipped to [0, 1]."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    height, width = ymax - ymin, xmax - xmin
    grow_y = context_fraction(height) * height / 2.0
    grow_x = context_fraction(width) * width / 2.0
    grown = tf.stack([ymin - grow_y, xmin - grow_x, ymax + grow_y, xmax + grow_x], axis=-1)
    return tf.clip_by_value(grown, 0.0, 1.0)


def pixel_window(box, height, width):
    """The integer crop window (offset_y, offset_x, crop_height, crop_width) of a box.

    The window covers the box (floor of the start, ceil of the end), lies in
    the image and is at least 1 px on each side.
    """
    box = tf.convert_to_tensor(box, tf.float32)
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    scaled = box * size
    start = tf.cast(tf.floor(scaled[:2] + 1e-4), tf.int32)
    end = tf.cast(tf.math.ceil(scaled[2:] - 1e-4), tf.int32)
    limit = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32)])
    start = tf.clip_by_value(start, 0, limit - 1)
    end = tf.clip_by_value(tf.maximum(end, start + 1), 1, limit)
    return start[0], start[1], end[0] - start[0], end[1] - start[1]


def box_in_window(box, window, height, width):
    """Re-expresses a normalised box relative to a pixel window, clipped to [0, 1]."""
    offset_y, offset_x, crop_height, crop_width = [tf.cast(v, tf.float32) for v in window]
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    pixels = tf.convert_to_tensor(box, tf.float32) * size
    shifted = pixels - tf.stack([offset_y, offset_x, offset_y, offset_x])
    relative = shifted / tf.stack([crop_height, crop_width, crop_height, crop_width])
    return tf.clip_by_value(relative, 0.0, 1.0)
