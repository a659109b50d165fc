"""Turning one raw image and its boxes into serialised Examples.

Runs inside the converter's worker processes. Every departure from a clean
input goes to a `ProblemLog` (which raises at once in strict mode); inputs
that cannot be used raise `SkipInput`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from data_prep.problems import ProblemLog, SkipInput
from tnet_tf.data import boxes as box_lib
from tnet_tf.data import schema

JPEG_QUALITY = 95
MIN_BOX_SIDE = 2  # boxes with a side of at most this many pixels are dropped
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"))


@dataclasses.dataclass(frozen=True)
class PixelBox:
    """A box in pixels of the image it was annotated on, with its class index."""
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int

    @classmethod
    def from_xywh(cls, x, y, width, height, label) -> "PixelBox":
        return cls(float(x), float(y), float(x) + float(width), float(y) + float(height),
                   int(label))


@dataclasses.dataclass(frozen=True)
class Item:
    """One raw image to convert.

    Attributes:
      path: absolute path of the image file.
      filename: path relative to the raw root, stored in `image/filename`.
      label: class index.
      boxes: boxes in pixels of `reference_size` (width, height); None
        reference size means the decoded image's size.
      annotation: file the boxes come from, relative to the raw root (named
        by the report when a box is clipped or dropped); default `filename`.
    """
    path: str
    filename: str
    label: int
    boxes: Tuple[PixelBox, ...] = ()
    reference_size: Optional[Tuple[int, int]] = None
    annotation: str = ""


@dataclasses.dataclass
class StoredImage:
    jpeg: bytes
    height: int
    width: int
    pixels: tf.Tensor          # decoded uint8 [h, w, 3] at the original size
    downscaled: bool


def image_format(data: bytes) -> Optional[str]:
    """"JPEG", "PNG", "GIF", "BMP" from the file's magic bytes, else None."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def downscale_size(height: int, width: int, max_min_dim: int) -> Optional[Tuple[int, int]]:
    """The (height, width) with shorter side `max_min_dim`, or None if already small enough."""
    if not max_min_dim or min(height, width) <= max_min_dim:
        return None
    scale = max_min_dim / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def encode_jpeg(pixels: tf.Tensor) -> bytes:
    return tf.io.encode_jpeg(pixels, format="rgb", quality=JPEG_QUALITY).numpy()


def _shrink(pixels: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
    resized = tf.image.resize(pixels, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def read_image(item: Item, max_min_dim: int, log: ProblemLog) -> StoredImage:
    """Reads, checks and (if needed) converts or downscales one image.

    A clean RGB JPEG whose shorter side is at most `max_min_dim` is stored
    byte for byte; PNG/GIF/BMP, CMYK and grayscale JPEGs are converted to
    RGB JPEG (logged); unreadable, truncated or unknown files raise SkipInput.
    """
    try:
        with open(item.path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise SkipInput(f"unreadable image file ({error.strerror})") from None
    kind = image_format(data)
    if kind is None:
        raise SkipInput("not an image (no JPEG, PNG, GIF or BMP signature)")
    try:
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        channels = int(tf.image.extract_jpeg_shape(data)[2]) if kind == "JPEG" else 3
    except tf.errors.OpError as error:
        detail = re.sub(r"\{\{[^}]*\}\}", "", error.message or "").strip().splitlines()
        detail = detail[0][:100] if detail else "decode error"
        raise SkipInput(f"truncated or corrupt {kind} image ({detail})") from None
    convert = None
    if kind != "JPEG":
        convert = f"{kind} image converted to RGB JPEG"
    elif channels == 4:
        convert = "CMYK JPEG converted to RGB JPEG"
    elif channels == 1:
        convert = "grayscale JPEG converted to RGB JPEG"
    elif channels != 3:
        convert = f"{channels}-channel JPEG converted to RGB JPEG"
    if convert:
        log.add(item.filename, convert, "converted")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    smaller = downscale_size(height, width, max_min_dim)
    if smaller:
        return StoredImage(encode_jpeg(_shrink(pixels, smaller)), smaller[0], smaller[1],
                           pixels, True)
    jpeg = encode_jpeg(pixels) if convert else data
    return StoredImage(jpeg, height, width, pixels, False)


def clean_boxes(boxes: Sequence[PixelBox], width: float, height: float, filename: str,
                log: ProblemLog, min_side: float = MIN_BOX_SIDE
                ) -> List[Tuple[schema.Box, int]]:
    """Normalised (ymin, xmin, ymax, xmax) boxes and labels; bad boxes clipped or dropped."""
    kept = []
    for box in boxes:
        coords = (box.xmin, box.ymin, box.xmax, box.ymax)
        shown = "[" + ", ".join(f"{c:g}" for c in coords) + "]"
        if not all(math.isfinite(c) for c in coords):
            log.add(filename, f"box {shown} has non-finite coordinates", "box dropped")
            continue
        if box.xmax <= box.xmin or box.ymax <= box.ymin:
            log.add(filename, f"zero-size box {shown} (xmin, ymin, xmax, ymax)", "box dropped")
            continue
        xmin, xmax = max(box.xmin, 0.0), min(box.xmax, float(width))
        ymin, ymax = max(box.ymin, 0.0), min(box.ymax, float(height))
        if xmax <= xmin or ymax <= ymin:
            log.add(filename, f"box {shown} lies outside the {width:g}x{height:g} image",
                    "box dropped")
            continue
        if (xmin, ymin, xmax, ymax) != coords:
            log.add(filename, f"box {shown} extends outside the {width:g}x{height:g} image",
                    "box clipped")
        if xmax - xmin <= min_side or ymax - ymin <= min_side:
            log.add(filename, f"tiny box {shown} (side <= {min_side:g} px)", "box dropped")
            continue
        kept.append(((ymin / height, xmin / width, ymax / height, xmax / width), box.label))
    return kept


def make_examples(item: Item, class_names: Sequence[str], max_min_dim: int,
                  bbox_crops: bool, log: ProblemLog) -> List[Tuple[bytes, int, List[int]]]:
    """Serialised Examples of one item, each with its class and its boxes' classes.

    One Example per image, or with `bbox_crops` one per valid box: the box
    grown by the context margins of `boxes.add_context`, cropped from the
    full-resolution image, with the box re-expressed in crop coordinates.
    """
    image = read_image(item, max_min_dim, log)
    full_height, full_width = (int(d) for d in image.pixels.shape[:2])
    ref_width, ref_height = item.reference_size or (full_width, full_height)
    boxes = clean_boxes(item.boxes, ref_width, ref_height,
                        item.annotation or item.filename, log)
    if not bbox_crops:
        serialized = schema.encode_example(
            image.jpeg, image.height, image.width, item.label, class_names[item.label],
            item.filename, [b for b, _ in boxes], [label for _, label in boxes])
        return [(serialized, item.label, [label for _, label in boxes])]
    if not boxes:
        raise SkipInput("no valid box to crop")
    examples = []
    for index, (box, label) in enumerate(boxes):
        window = box_lib.pixel_window(box_lib.add_context(box), full_height, full_width)
        offset_y, offset_x, crop_height, crop_width = (int(v) for v in window)
        crop = image.pixels[offset_y:offset_y + crop_height, offset_x:offset_x + crop_width]
        smaller = downscale_size(crop_height, crop_width, max_min_dim)
        if smaller:
            crop = _shrink(crop, smaller)
        inner = box_lib.box_in_window(box, window, full_height, full_width).numpy().tolist()
        serialized = schema.encode_example(
            encode_jpeg(crop), int(crop.shape[0]), int(crop.shape[1]), label,
            class_names[label], f"{item.filename}#box{index}", [inner], [label])
        examples.append((serialized, label, [label]))
    return examples
