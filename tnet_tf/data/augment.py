"""Training augmentation of Appendix B.2 and the evaluation resize, as pure functions.

Every random function takes an explicit stateless `seed` (int32/int64
tensor of shape [2]), so the same seed gives the same result eagerly and
inside `tf.data.Dataset.map`, whatever the parallelism.

Training: a crop covering 85-100 % of the image area with aspect ratio
0.5-2.0 (`sample_distorted_bounding_box`, min object covered 0.1); resize to
the input size with one of 8 methods drawn uniformly (no antialias); random
horizontal flip; brightness (max delta 32/255), saturation [0.5, 1.5], hue
(max delta 0.2) and contrast [0.5, 1.5] in one of 4 orders, or no colour
change, each of the 5 cases with probability 1/5 (as the authors' input
code: 4 of 5 images are distorted), clipped to [0, 1] once at the end;
values scaled to [-1, 1]. Images between the steps are float32 in [0, 1].
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

AREA_RANGE = (0.85, 1.0)
ASPECT_RATIO_RANGE = (0.5, 2.0)
MIN_OBJECT_COVERED = 0.1
RESIZE_METHODS = ("bilinear", "lanczos3", "lanczos5", "bicubic", "gaussian", "nearest",
                  "area", "mitchellcubic")
BRIGHTNESS_MAX_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
HUE_MAX_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)
WHOLE_IMAGE = ((0.0, 0.0, 1.0, 1.0),)


def split_seed(seed, count: int):
    """`count` independent stateless seeds [count, 2] derived from one."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=count)


def sample_crop_window(image_shape, seed, boxes=None,
                       area_range: Sequence[float] = AREA_RANGE,
                       aspect_ratio_range: Sequence[float] = ASPECT_RATIO_RANGE,
                       min_object_covered: float = MIN_OBJECT_COVERED):
    """Samples a crop window (offset_y, offset_x, height, width) in pixels.

    `image_shape` is [height, width, ...]; `boxes` [n, 4] normalised boxes the
    crop should cover at least `min_object_covered` of (None or empty: the
    whole image). Falls back to the whole image after 100 failed attempts.
    """
    if boxes is None:
        boxes = tf.constant(WHOLE_IMAGE, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    boxes = tf.cond(tf.shape(boxes)[0] > 0, lambda: boxes,
                    lambda: tf.constant(WHOLE_IMAGE, tf.float32))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([tf.cast(image_shape[:2], tf.int32), [3]], axis=0),
        bounding_boxes=tf.reshape(boxes, [1, -1, 4]),
        seed=tf.cast(seed, tf.int32),
        min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]


def resize(image, size: int, method: str = "bilinear", antialias: bool = False):
    """Resizes an image to size x size (no antialias unless asked), float32
    clipped to [0, 1]."""
    resized = tf.image.resize(to_unit_range(image), [size, size], method=method,
                              antialias=antialias)
    return tf.clip_by_value(tf.ensure_shape(resized, [size, size, 3]), 0.0, 1.0)


def random_resize(image, size: int, seed, methods: Sequence[str] = RESIZE_METHODS):
    """Resizes with a method drawn uniformly from `methods`."""
    index = tf.random.stateless_uniform([], seed, 0, len(methods), dtype=tf.int32)
    branches = [lambda m=m: resize(image, size, m) for m in methods]
    return tf.ensure_shape(tf.switch_case(index, branches), [size, size, 3])


def random_flip(image, seed):
    """Flips left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


COLOR_ORDERS = (("brightness", "saturation", "hue", "contrast"),
                ("saturation", "brightness", "contrast", "hue"),
                ("contrast", "hue", "brightness", "saturation"),
                ("hue", "saturation", "contrast", "brightness"),
                ())   # the fifth case: the colours are left as they are


def distort_color(image, seed):
    """Brightness, saturation, hue and contrast in one of the 4 orders of
    `COLOR_ORDERS`, or unchanged, each case with probability 1/5; the
    result is clipped to [0, 1] once, after the last operation, as the
    authors' code (the intermediate values may leave [0, 1])."""
    seeds = split_seed(seed, 5)
    ops = {
        "brightness": lambda x: tf.image.stateless_random_brightness(
            x, BRIGHTNESS_MAX_DELTA, seeds[1]),
        "saturation": lambda x: tf.image.stateless_random_saturation(
            x, *SATURATION_RANGE, seeds[2]),
        "hue": lambda x: tf.image.stateless_random_hue(x, HUE_MAX_DELTA, seeds[3]),
        "contrast": lambda x: tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seeds[4]),
    }

    def apply(order):
        result = image
        for name in order:
            result = ops[name](result)
        return tf.clip_by_value(result, 0.0, 1.0) if order else result

    index = tf.random.stateless_uniform([], seeds[0], 0, len(COLOR_ORDERS), dtype=tf.int32)
    distorted = tf.switch_case(index, [lambda o=o: apply(o) for o in COLOR_ORDERS])
    return tf.ensure_shape(distorted, image.shape)


def to_unit_range(image):
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32."""
    if image.dtype == tf.uint8:
        return tf.image.convert_image_dtype(image, tf.float32)
    return tf.cast(image, tf.float32)


def to_signed_range(image):
    """[0, 1] -> [-1, 1]."""
    return tf.clip_by_value(image * 2.0 - 1.0, -1.0, 1.0)


def augment_crop(crop, size: int, seed):
    """The B.2 steps after cropping: random resize, flip, colour; output in [-1, 1]."""
    seeds = split_seed(seed, 3)
    image = random_resize(crop, size, seeds[0])
    image = random_flip(image, seeds[1])
    image = distort_color(image, seeds[2])
    return to_signed_range(image)


def train_image(image, size: int, seed, boxes=None):
    """B.2 augmentation of a decoded image [h, w, 3] (uint8 or [0, 1] float)."""
    seeds = split_seed(seed, 2)
    offset_y, offset_x, height, width = sample_crop_window(tf.shape(image), seeds[0], boxes)
    crop = tf.slice(image, [offset_y, offset_x, 0], [height, width, 3])
    return augment_crop(crop, size, seeds[1])


def train_jpeg(encoded, size: int, seed, boxes=None):
    """B.2 augmentation of JPEG bytes, decoding only the sampled crop."""
    seeds = split_seed(seed, 2)
    shape = tf.image.extract_jpeg_shape(encoded)
    offset_y, offset_x, height, width = sample_crop_window(shape, seeds[0], boxes)
    crop = tf.image.decode_and_crop_jpeg(encoded, tf.stack([offset_y, offset_x, height, width]),
                                         channels=3)
    return augment_crop(crop, size, seeds[1])


def eval_image(image, size: int, central_fraction: Optional[float] = None,
               antialias: bool = False):
    """Evaluation: optional central crop of `central_fraction`, bilinear resize
    (antialiased if asked); [-1, 1]."""
    image = to_unit_range(image)
    if central_fraction is not None and central_fraction < 1.0:
        image = tf.image.central_crop(image, central_fraction)
    return to_signed_range(resize(image, size, "bilinear", antialias))
