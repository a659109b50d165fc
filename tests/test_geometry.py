"""Geometry: grid cells, box composition, crops, receptive fields, positional codes."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tnet_tf import backbones, geometry
from conftest import release_cell


def test_grid_3x3_at_448_has_224px_cells_with_112px_stride():
    boxes = geometry.grid_boxes(3, 0.5) * 448
    starts = [0, 112, 224]
    expected = [[y, x, y + 224, x + 224] for y in starts for x in starts]
    np.testing.assert_allclose(boxes, expected, atol=1e-9)


def test_grid_5x5_at_224_has_77px_cells_reaching_the_far_edge():
    boxes = geometry.grid_boxes(5, 0.34375) * 224
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 77.0)
    np.testing.assert_allclose(boxes[:5, 1], [0, 36.75, 73.5, 110.25, 147.0])
    np.testing.assert_allclose(boxes[-1], [147, 147, 224, 224])
    # row-major: index = row * 5 + column
    np.testing.assert_allclose(boxes[7], [36.75, 73.5, 113.75, 150.5])


def test_level3_box_is_the_composition_of_parent_and_child_cells():
    cells = geometry.grid_boxes(3, 0.5)
    parent, child = cells[5], cells[7]          # parent: row 1, col 2; child: row 2, col 1
    # By hand in 896 px: parent spans y 224..672, x 448..896 (448 px); the child cell of a
    # 448 px region at row 2, col 1 starts 224 px down and 112 px right, 224 px wide.
    expected = np.array([224 + 224, 448 + 112, 224 + 224 + 224, 448 + 112 + 224]) / 896
    np.testing.assert_allclose(geometry.compose_boxes(parent, child), expected)
    tensor = geometry.compose_boxes(tf.constant(parent[None], tf.float32),
                                    tf.constant(child[None], tf.float32))
    np.testing.assert_allclose(tensor.numpy()[0], expected, rtol=1e-6)


def _crop(image, box, size):
    boxes = geometry.crop_and_resize_boxes(tf.constant([box], tf.float32), image.shape[0],
                                           image.shape[1], size)
    return tf.image.crop_and_resize(image[None], boxes, [0], [size, size])[0].numpy()


def test_whole_image_box_equals_bilinear_resize():
    image = tf.random.uniform([96, 80, 3])
    direct = tf.image.resize(image, [32, 32], method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(_crop(image, [0, 0, 1, 1], 32), direct, atol=1e-5)


def test_cell_crop_at_native_resolution_is_an_exact_pixel_copy():
    image = tf.random.uniform([64, 64, 3])
    box = geometry.grid_boxes(3, 0.5)[5]        # row 1, col 2 -> pixels y 16..48, x 32..64
    np.testing.assert_allclose(_crop(image, box, 32), image.numpy()[16:48, 32:64], atol=1e-6)


@pytest.mark.parametrize("grid_size, fraction, parent_index, child_index",
                         [(3, 0.5, 4, 2), (5, 0.34375, 7, 18), (3, 0.6, 8, 0)])
def test_direct_crop_equals_crop_of_the_parent_crop(grid_size, fraction, parent_index,
                                                     child_index):
    x = np.linspace(0, 6, 896)
    smooth = np.sin(x[:, None] + 0.5 * x[None, :])    # smooth, so interpolation error is small
    image = tf.constant(np.stack([smooth, smooth.T, smooth * 0.5], -1), tf.float32)
    cells = geometry.grid_boxes(grid_size, fraction)
    parent, child = cells[parent_index], cells[child_index]
    parent_crop = _crop(image, parent, 448)
    two_step = _crop(tf.constant(parent_crop), child, 224)
    direct = _crop(image, geometry.compose_boxes(parent, child), 224)
    np.testing.assert_allclose(direct, two_step, atol=2e-3)


def test_bagnet77_receptive_fields_match_table_4():
    fields = geometry.receptive_fields(backbones.bagnet77(77))
    table4 = {"stem_act": (75, 3), "block1_out": (38, 5), "block2_out": (38, 9),
              "block4_out": (19, 13), "block5_out": (19, 21), "block8_out": (9, 29),
              "block9_out": (9, 45), "block13_out": (9, 45), "block14_out": (7, 61),
              "block15_out": (7, 77), "top_act": (7, 77)}
    for name, (size, field) in table4.items():
        rows, cols = fields[name]
        assert (rows.size, rows.receptive_field) == (size, field), name
        assert cols == rows
    assert fields["avg_pool"] is None


def test_efficientnet_b0_receptive_fields_match_table_5():
    fields = geometry.receptive_fields(backbones.efficientnet("efficientnet-b0", 224))
    table5 = {"stem_activation": (112, 3), "block1a_project_bn": (112, 7),
              "block2a_project_bn": (56, 11), "block2b_add": (56, 19),
              "block3a_project_bn": (28, 35), "block3b_add": (28, 67),
              "block4a_project_bn": (14, 83), "block4b_add": (14, 115),
              "block4c_add": (14, 147)}
    for name, (size, field) in table5.items():
        rows, _ = fields[name]
        assert (rows.size, rows.receptive_field) == (size, field), name


def test_aligned_pixels_of_efficientnet_b0_for_the_3x3_grid():
    rows, _ = geometry.receptive_fields(backbones.efficientnet("efficientnet-b0", 224))["block4c_add"]
    # Keras pads the stem (3x3, stride 2) of an even input by (0, 1): output pixel 0 covers
    # input pixels 0..2, centred 1.5 px from the edge. Each stride-2 block doubles the jump
    # and, padded by (k // 2 - 1, k // 2), moves the first centre by (jump_in / 2): 15.5 px.
    assert rows.jump == 16.0 and rows.start == 15.5
    centres = 15.5 + 16 * np.arange(14)
    cell_centres = np.array([56.0, 112.0, 168.0])   # 224 px cells of the 448 input at 224 px
    by_hand = [int(np.argmin(np.abs(centres - c))) for c in cell_centres]
    assert by_hand == [3, 6, 10]
    np.testing.assert_array_equal(geometry.aligned_indices(rows.centres(), 224, 3, 0.5), by_hand)


def test_aligned_pixels_of_bagnet77_for_the_5x5_grid():
    rows, _ = geometry.receptive_fields(backbones.bagnet77(77))["block13_out"]
    assert (rows.jump, rows.start) == (8.0, 7.5)
    cell = 0.34375 * 77
    cell_centres = cell / 2 + np.arange(5) * (77 - cell) / 4
    by_hand = [int(np.argmin(np.abs(7.5 + 8 * np.arange(9) - c))) for c in cell_centres]
    np.testing.assert_array_equal(geometry.aligned_indices(rows.centres(), 77, 5, 0.34375), by_hand)


def _numpy_code_paper(x, y, s, size):
    count = math.ceil(size / 6)
    code = []
    for value in (x, y, s):
        for function in (np.sin, np.cos):
            code += [function(value * 0.01 ** (t / count)) for t in range(count)]
    return np.array(code[:size])


def _numpy_code_release(x, y, s, size):
    count = size // 6
    code = []
    for value in (y, x, s):
        for function in (np.sin, np.cos):
            code += [function(value * 100.0 ** (-t / (count - 1))) for t in range(count)]
    return np.array(code + [0.0] * (size - len(code)))


@pytest.mark.parametrize("size", [320, 512, 13])
def test_positional_code_matches_numpy(size):
    triplets = [(0, 0, 0), (2, 1, 1), (8, 5, 2), (3.5, 0.25, 1)]
    x, y, s = (tf.constant([t[i] for t in triplets], tf.float32) for i in range(3))
    paper = geometry.positional_code(x, y, s, size).numpy()
    release = geometry.positional_code(x, y, s, size, "release").numpy()
    assert paper.shape == release.shape == (len(triplets), size)
    for row, triplet in enumerate(triplets):
        np.testing.assert_allclose(paper[row], _numpy_code_paper(*triplet, size), atol=1e-5)
        np.testing.assert_allclose(release[row], _numpy_code_release(*triplet, size), atol=1e-5)


def _smooth_images(batch, height, width):
    y, x = np.meshgrid(np.linspace(0, 3, height), np.linspace(0, 5, width), indexing="ij")
    channels = [np.sin(y + c) * np.cos(x - 2 * c) for c in range(3)]
    image = np.stack(channels, -1).astype(np.float32)
    return tf.constant(np.stack([image * (b + 1) / batch for b in range(batch)]))


def test_gather_crop_and_resize_equals_the_tf_kernel_with_its_gradients():
    rng = np.random.default_rng(0)
    images = _smooth_images(2, 61, 47)
    starts = rng.uniform(-0.3, 0.8, (9, 2))          # some boxes leave the image
    ends = starts + rng.uniform(0.05, 0.7, (9, 2))
    boxes = tf.constant(np.concatenate([starts, ends], 1).astype(np.float32))   # y1 x1 y2 x2
    indices = tf.constant(rng.integers(0, 2, 9).astype(np.int32))
    for size in ((13, 17), (1, 5)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([images, boxes])
            expected = tf.image.crop_and_resize(images, boxes, indices, size)
            actual = geometry.crop_and_resize(images, boxes, indices, size)
            weights = tf.random.stateless_uniform(expected.shape, [0, 1])
            losses = [tf.reduce_sum(weights * crops) for crops in (expected, actual)]
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-5)
        assert np.count_nonzero(expected.numpy() == 0) > 0      # extrapolated rows / columns
        for source in (images, boxes):
            grad_tf, grad_gather = (tape.gradient(loss, source) for loss in losses)
            np.testing.assert_allclose(tf.convert_to_tensor(grad_gather).numpy(),
                                       tf.convert_to_tensor(grad_tf).numpy(),
                                       rtol=1e-3, atol=1e-3)


def test_gather_crop_and_resize_compiles_with_xla():
    images = _smooth_images(1, 40, 40)
    boxes, indices = tf.constant([[0.1, 0.2, 0.6, 0.9]]), tf.constant([0])
    compiled = tf.function(lambda i: geometry.crop_and_resize(i, boxes, indices, (8, 8)),
                           jit_compile=True)
    np.testing.assert_allclose(compiled(images).numpy(),
                               tf.image.crop_and_resize(images, boxes, indices, (8, 8)).numpy(),
                               atol=1e-5)
    kernel = tf.function(lambda i: tf.image.crop_and_resize(i, boxes, indices, (8, 8)),
                         jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="CropAndResize"):
        kernel(images)


@pytest.mark.parametrize("size, grid_size, fraction, expected", [
    (224, 5, 0.34375, (77, 37, 1)),    # the ImageNet example: a 225 px frame
    (448, 3, 0.5, (224, 112, 0)),      # fMoW: already whole pixels
    (448, 5, 0.35, (157, 73, 1)),      # CUB: round(156.8), ceil(72.75), 449 px frame
    (157, 5, 0.35, (55, 26, 1)),       # its level 3: round(54.95), ceil(25.5), 159 px frame
    (310, 5, 0.34375, (107, 51, 1))])  # round(106.5625), ceil(50.75), 311 px frame
def test_integer_grid_by_hand(size, grid_size, fraction, expected):
    values = geometry.integer_grid(tf.constant([size, size]), grid_size, fraction)
    np.testing.assert_array_equal(np.stack([v.numpy() for v in values]),
                                  np.array(expected)[:, None].repeat(2, 1))


def test_integer_grid_of_a_number_is_numpy_and_equals_the_tensor_version():
    for size in (224, 225, 310, 448, 897):
        numbers = geometry.integer_grid(np.array([size, size + 1]), 5, 0.35)
        tensors = geometry.integer_grid(tf.constant([size, size + 1]), 5, 0.35)
        for number, tensor in zip(numbers, tensors):
            assert isinstance(number, np.ndarray)
            np.testing.assert_array_equal(number, tensor.numpy())


def test_integer_grid_rounds_half_to_even_like_numpy():
    # 0.5 * 225 = 112.5 -> 112 (numpy's and the release's rounding), not 113.
    cell, stride, pad = (v.numpy() for v in geometry.integer_grid(tf.constant(225.0), 3, 0.5))
    assert (cell, stride, pad) == (112, 57, 1)
    assert release_cell(np.zeros([225, 225, 1]), 0, 3, 0.5).shape == (112, 112, 1)


def test_cut_windows_copies_pixels_and_zeroes_outside_the_valid_part():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 20, 24, 3)).astype(np.float32)
    windows = np.array([[-1, -2, 9, 8], [15, 20, 25, 30], [4, 5, 14, 15]], np.float32)
    valid = np.array([[0, 0, 9, 8], [15, 20, 20, 24], [6, 5, 14, 12]], np.float32)
    indices = np.array([0, 1, 1])
    crops = geometry.cut_windows(tf.constant(images), windows[:, :2], (10, 10), valid,
                                 indices).numpy()
    padded = np.pad(images, [[0, 0], [5, 10], [5, 10], [0, 0]])
    for crop, window, inside, index in zip(crops, windows.astype(int), valid.astype(int),
                                           indices):
        y1, x1, y2, x2 = window + 5
        expected = padded[index, y1:y2, x1:x2].copy()
        mask = np.zeros(expected.shape[:2], bool)
        mask[inside[0] - window[0]:inside[2] - window[0],
             inside[1] - window[1]:inside[3] - window[1]] = True
        expected[~mask] = 0
        np.testing.assert_array_equal(crop, expected)
