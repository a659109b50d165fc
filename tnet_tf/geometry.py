"""Geometry of TNet's image pyramid, as pure functions.

Boxes are `[y1, x1, y2, x2]` in *edge-normalised* coordinates: 0 is the
top/left edge of the image and 1 its bottom/right edge, so a box covers
`[y1 * H, y2 * H)` pixels. A child box given relative to its parent box is
turned into image coordinates by `compose_boxes`; boxes of every level are
composed this way, so each level crops from the original image directly.

`tf.image.crop_and_resize` uses another convention (0 and 1 are the centres
of the first and last pixels); `crop_and_resize_boxes` converts, so that a
crop samples the box the same way `tf.image.resize(..., antialias=False)`
samples a whole image (half-pixel centres).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf


def grid_boxes(grid_size: int, cell_fraction: float) -> np.ndarray:
    """The n x n grid of overlapping cells, row-major, as [n * n, 4] boxes.

    Each cell spans `cell_fraction` of the image side; cells are evenly
    strided from the top-left to the bottom-right corner.
    """
    if grid_size == 1:
        starts = np.zeros([1])
    else:
        starts = np.arange(grid_size) * (1.0 - cell_fraction) / (grid_size - 1)
    y1, x1 = np.meshgrid(starts, starts, indexing="ij")
    y1, x1 = y1.reshape(-1), x1.reshape(-1)
    return np.stack([y1, x1, y1 + cell_fraction, x1 + cell_fraction], axis=-1)


def compose_boxes(parent, child):
    """Box `child` (relative to box `parent`) in the parent's frame; broadcasts."""
    parent_y1, parent_x1, parent_y2, parent_x2 = _unstack(parent)
    child_y1, child_x1, child_y2, child_x2 = _unstack(child)
    height, width = parent_y2 - parent_y1, parent_x2 - parent_x1
    return _stack([parent_y1 + child_y1 * height, parent_x1 + child_x1 * width,
                   parent_y1 + child_y2 * height, parent_x1 + child_x2 * width])


def crop_and_resize_boxes(boxes, image_height, image_width, crop_size: int):
    """Converts edge-normalised boxes to `tf.image.crop_and_resize` boxes.

    The output pixel j of a crop of size `crop_size` samples the image at
    the point `y1 * H + (j + 0.5) * (y2 - y1) * H / crop_size` (edge pixel
    units), the half-pixel convention of `tf.image.resize`.
    """
    y1, x1, y2, x2 = tf.unstack(tf.convert_to_tensor(boxes, tf.float32), axis=-1)

    def convert(start, end, size):
        size = tf.cast(size, start.dtype)
        step = (end - start) * size / crop_size
        first = start * size + 0.5 * step - 0.5
        last = first + (crop_size - 1) * step
        return first / (size - 1.0), last / (size - 1.0)

    new_y1, new_y2 = convert(y1, y2, image_height)
    new_x1, new_x2 = convert(x1, x2, image_width)
    return tf.stack([new_y1, new_x1, new_y2, new_x2], axis=-1)


def crop_and_resize(images, boxes, box_indices, crop_size):
    """`tf.image.crop_and_resize` (bilinear, extrapolation value 0) built from
    gathers, which XLA compiles (CropAndResize has no XLA kernel, so the
    TPU / `jit_compile` steps need this path); differentiable with respect to
    the images and the boxes.

    images [B, H, W, C]; boxes [N, 4] in crop_and_resize's convention
    (`crop_and_resize_boxes`); box_indices [N]; crop_size (height, width).
    Returns [N, height, width, C] float32. Bilinear interpolation is
    separable: rows are interpolated first, then columns.
    """
    images = tf.cast(images, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]

    def taps(start, end, extent, count):
        # The sampling points of crop_and_resize along one axis: [N, count].
        last = tf.cast(extent - 1, tf.float32)
        if count > 1:   # the same float operations as the kernel's
            scale = (end - start) * last / float(count - 1)
            points = start[:, None] * last + tf.range(count, dtype=tf.float32) * scale[:, None]
        else:
            points = (0.5 * (start + end) * last)[:, None]
        low = tf.floor(points)
        inside = tf.cast((points >= 0.0) & (points <= last), tf.float32)
        clip = lambda index: tf.clip_by_value(tf.cast(index, tf.int32), 0, extent - 1)
        return clip(low), clip(tf.math.ceil(points)), points - low, inside

    top, bottom, y_frac, y_inside = taps(boxes[:, 0], boxes[:, 2], height, crop_size[0])
    left, right, x_frac, x_inside = taps(boxes[:, 1], boxes[:, 3], width, crop_size[1])
    rows = tf.reshape(images, [-1, width, shape[3]])                     # [B * H, W, C]
    first_row = tf.cast(box_indices, tf.int32)[:, None] * height
    upper, lower = tf.gather(rows, first_row + top), tf.gather(rows, first_row + bottom)
    lines = upper + (lower - upper) * y_frac[..., None, None]            # [N, h, W, C]
    west = tf.gather(lines, left, axis=2, batch_dims=1)
    east = tf.gather(lines, right, axis=2, batch_dims=1)
    crops = west + (east - west) * x_frac[:, None, :, None]              # [N, h, w, C]
    mask = y_inside[:, :, None] * x_inside[:, None, :]
    return crops * mask[..., None]


def integer_grid(size, grid_size: int, cell_fraction: float):
    """The authors' release's grid over a side of `size` pixels, in whole
    pixels: (cell, stride, pad_before), shaped like `size` (numpy for a
    number or array, so static sizes stay static; tensors for a tensor).

    The cell side is `size * cell_fraction` rounded (half to even, as
    numpy's), the stride `(size - cell) / (n - 1)` rounded up; the grid's
    frame `(n - 1) * stride + cell` overhangs the side by a few pixels, which
    the release zero-pads, ceil(half) of them before. Cell j of a row starts
    at `j * stride - pad_before`. 224 px, 5 x 5, 0.34375: 77 px cells on a
    37 px stride from -1.
    """
    ops = (tf.round, tf.math.ceil) if tf.is_tensor(size) else (np.round, np.ceil)
    round_half_even, ceil = ops
    size = tf.cast(size, tf.float32) if tf.is_tensor(size) else np.asarray(size, np.float64)
    cell = round_half_even(size * cell_fraction)
    stride = ceil((size - cell) / (grid_size - 1)) if grid_size > 1 else 0.0 * size
    pad_before = ceil(((grid_size - 1) * stride + cell - size) / 2.0)
    return cell, stride, pad_before


def cut_windows(images, starts, size, valid, box_indices):
    """Whole-pixel windows of `images`, copied without resampling.

    images [B, H, W, C]; starts [N, 2] the (y, x) pixel of each window's
    top-left corner (whole numbers, may lie outside the image); size (h, w)
    of every window (static ints keep the output shape static); valid [N, 4]
    `[y1, x1, y2, x2]` pixels, the part of each window that holds image
    pixels (a rectangle inside the image), zero elsewhere; box_indices [N].
    Returns [N, h, w, C] float32. Gathers only, so XLA compiles it.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    starts = tf.cast(tf.round(starts), tf.int32)
    valid = tf.cast(tf.round(valid), tf.int32)

    def axis(start, extent, first, last):
        # Pixel positions [N, extent] along one axis and whether each holds image pixels.
        positions = start[:, None] + tf.range(extent)[None, :]
        return positions, (positions >= first[:, None]) & (positions < last[:, None])

    rows, row_inside = axis(starts[:, 0], size[0], valid[:, 0], valid[:, 2])
    cols, col_inside = axis(starts[:, 1], size[1], valid[:, 1], valid[:, 3])
    flat = tf.reshape(images, [-1, width, shape[3]])                     # [B * H, W, C]
    lines = tf.gather(flat, tf.cast(box_indices, tf.int32)[:, None] * height
                      + tf.clip_by_value(rows, 0, height - 1))            # [N, h, W, C]
    crops = tf.gather(lines, tf.clip_by_value(cols, 0, width - 1), axis=2, batch_dims=1)
    mask = tf.cast(row_inside[:, :, None] & col_inside[:, None, :], tf.float32)
    return crops * mask[..., None]


def cell_centres(grid_size: int, cell_fraction: float) -> np.ndarray:
    """Centres of the grid cells along one axis, as fractions of the side."""
    boxes = grid_boxes(grid_size, cell_fraction)[:grid_size]
    return (boxes[:, 1] + boxes[:, 3]) / 2.0


# --------------------------------------------------------------------------
# Receptive fields of a Keras functional model.

class AxisGeometry(Tuple[int, float, float, float]):
    """(size, jump, start, receptive_field) of a feature map along one axis.

    Output pixel i has its receptive-field centre at `start + i * jump`,
    in input pixels measured from the input's top/left edge.
    """

    def __new__(cls, size, jump, start, receptive_field):
        return super().__new__(cls, (size, jump, start, receptive_field))

    size = property(lambda self: self[0])
    jump = property(lambda self: self[1])
    start = property(lambda self: self[2])
    receptive_field = property(lambda self: self[3])

    def centres(self) -> np.ndarray:
        return self.start + self.jump * np.arange(self.size)


_POINTWISE = (
    tf.keras.layers.Activation, tf.keras.layers.BatchNormalization, tf.keras.layers.Dropout,
    tf.keras.layers.SpatialDropout2D, tf.keras.layers.Rescaling, tf.keras.layers.Normalization,
    tf.keras.layers.LeakyReLU, tf.keras.layers.ReLU,
)
_SLIDING = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D,
            tf.keras.layers.MaxPooling2D, tf.keras.layers.AveragePooling2D)


def receptive_fields(model: tf.keras.Model) -> Dict[str, Optional[Tuple[AxisGeometry, AxisGeometry]]]:
    """Receptive-field geometry of every layer output of a flat functional model.

    Walks the layers in topological order from the (statically sized) input
    and composes kernels, strides and paddings; `ZeroPadding2D` and
    `Cropping2D` shift the grid. Where several inputs meet (residual adds,
    squeeze-excitation products) the output grid is that of the spatial
    input with the largest receptive field. Layers whose output is not a
    spatial map (global pooling and what follows it) map to None.
    """
    geometry: Dict[str, Optional[Tuple[AxisGeometry, AxisGeometry]]] = {}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            _, height, width, _ = layer.output_shape[0]
            if height is None or width is None:
                raise ValueError("receptive_fields needs a model with a static input size")
            geometry[layer.name] = (AxisGeometry(height, 1.0, 0.5, 1.0),
                                    AxisGeometry(width, 1.0, 0.5, 1.0))
            continue
        inbound = layer.inbound_nodes[0].inbound_layers
        inbound = inbound if isinstance(inbound, list) else [inbound]
        output_shape = layer.output_shape
        if not (isinstance(output_shape, tuple) and len(output_shape) == 4):
            geometry[layer.name] = None
            continue
        spatial = [geometry[l.name] for l in inbound
                   if geometry.get(l.name) is not None
                   and (geometry[l.name][0].size, geometry[l.name][1].size) != (1, 1)]
        if not spatial:
            geometry[layer.name] = None
            continue
        source = max(spatial, key=lambda g: g[0].receptive_field * g[1].receptive_field)
        geometry[layer.name] = tuple(
            _layer_axis_geometry(layer, axis, source[axis], output_shape[axis + 1])
            for axis in (0, 1))
    return geometry


def _layer_axis_geometry(layer, axis: int, g: AxisGeometry, out_size: int) -> AxisGeometry:
    if isinstance(layer, _SLIDING):
        kernel = layer.pool_size[axis] if hasattr(layer, "pool_size") else layer.kernel_size[axis]
        stride = layer.strides[axis]
        if getattr(layer, "dilation_rate", (1, 1))[axis] != 1:
            raise ValueError(f"layer {layer.name}: dilated convolutions are not supported")
        if layer.padding == "valid":
            pad_begin = 0
        else:
            total = max((out_size - 1) * stride + kernel - g.size, 0)
            pad_begin = total // 2
        return AxisGeometry(out_size, g.jump * stride,
                            g.start + ((kernel - 1) / 2.0 - pad_begin) * g.jump,
                            g.receptive_field + (kernel - 1) * g.jump)
    if isinstance(layer, tf.keras.layers.ZeroPadding2D):
        before = layer.padding[axis][0]
        return AxisGeometry(out_size, g.jump, g.start - before * g.jump, g.receptive_field)
    if isinstance(layer, tf.keras.layers.Cropping2D):
        before = layer.cropping[axis][0]
        return AxisGeometry(out_size, g.jump, g.start + before * g.jump, g.receptive_field)
    if out_size != g.size:
        raise ValueError(f"cannot derive the receptive field through layer {layer.name} "
                         f"({type(layer).__name__}) which changes the spatial size")
    return g


def aligned_indices(centres: np.ndarray, input_size: int, grid_size: int,
                    cell_fraction: float) -> np.ndarray:
    """Indices of the feature-map pixels whose receptive-field centres are
    nearest to the centres of the grid cells (one axis)."""
    targets = cell_centres(grid_size, cell_fraction) * input_size
    return np.argmin(np.abs(centres[None, :] - targets[:, None]), axis=1)


# --------------------------------------------------------------------------
# Positional codes of (x, y, scale).

def positional_code(x, y, scale, size: int, variant: str = "paper"):
    """The sin/cos code of cell coordinates (x, y) and scale (Appendix B.1.2).

    x, y, scale: float tensors of the same shape [...]; returns [..., size].
    "paper": K = ceil(size / 6) frequencies (1/100)^(t/K), blocks
    sin(x f), cos(x f), sin(y f), cos(y f), sin(s f), cos(s f), trimmed.
    "release": K = floor(size / 6) frequencies 100^(-t/(K-1)), blocks in the
    order y, x, s, zero padded to `size`.
    """
    values = {"x": x, "y": y, "s": scale}
    if variant == "paper":
        count = math.ceil(size / 6)
        frequencies = (1.0 / 100.0) ** (np.arange(count) / count)
        order = "xys"
    elif variant == "release":
        count = size // 6
        frequencies = 100.0 ** (-np.arange(count) / max(count - 1, 1))
        order = "yxs"
    else:
        raise ValueError(f"unknown positional code variant {variant!r}")
    frequencies = tf.constant(frequencies, tf.float32)
    blocks = []
    for name in order:
        angle = tf.cast(values[name], tf.float32)[..., None] * frequencies
        blocks += [tf.sin(angle), tf.cos(angle)]
    code = tf.concat(blocks, axis=-1)[..., :size]
    missing = size - code.shape[-1]
    if missing:
        code = tf.pad(code, [[0, 0]] * (code.shape.rank - 1) + [[0, missing]])
    return code


def _unstack(boxes):
    return tf.unstack(tf.convert_to_tensor(boxes, tf.float32), axis=-1) if tf.is_tensor(boxes) \
        else [np.asarray(boxes, np.float64)[..., i] for i in range(4)]


def _stack(parts):
    return tf.stack(parts, axis=-1) if tf.is_tensor(parts[0]) else np.stack(parts, axis=-1)
