"""B.2 augmentation: limits, ranges and determinism, eagerly and inside tf.data.map."""
import numpy as np
import pytest
import tensorflow as tf

from tnet_tf.data import augment


def noisy_image(height=37, width=53, seed=0):
    return tf.constant(np.random.RandomState(seed).randint(0, 256, (height, width, 3)),
                       tf.uint8)


@pytest.mark.parametrize("height,width", [(60, 60), (60, 80), (100, 70)])
def test_crop_window_keeps_the_area_and_aspect_limits(height, width):
    def window(seed):
        return tf.stack(augment.sample_crop_window(tf.constant([height, width, 3]), seed))

    seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), 200)
    eager = np.array([window(seed).numpy() for seed in seeds])
    mapped = np.array(list(tf.data.Dataset.from_tensor_slices(seeds).map(window)
                           .as_numpy_iterator()))
    np.testing.assert_array_equal(eager, mapped)
    offset_y, offset_x, crop_height, crop_width = eager.T
    area = crop_height * crop_width / (height * width)
    assert area.min() >= 0.85 - 2.0 / min(height, width) and area.max() <= 1.0
    aspect = crop_width / crop_height
    assert aspect.min() >= 0.5 * 0.97 and aspect.max() <= 2.0 * 1.03
    assert (offset_y >= 0).all() and (offset_y + crop_height <= height).all()
    assert (offset_x >= 0).all() and (offset_x + crop_width <= width).all()
    assert len({tuple(w) for w in eager}) > 10  # actually random


def test_random_resize_draws_all_eight_methods():
    image = noisy_image()
    outputs = {m: augment.resize(image, 16, m).numpy() for m in augment.RESIZE_METHODS}
    assert len({o.tobytes() for o in outputs.values()}) == 8
    drawn = set()
    for seed in tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 64):
        result = augment.random_resize(image, 16, seed).numpy()
        drawn |= {m for m, o in outputs.items() if np.array_equal(o, result)}
    assert drawn == set(augment.RESIZE_METHODS)
    for output in outputs.values():
        assert output.min() >= 0.0 and output.max() <= 1.0 and output.dtype == np.float32


@pytest.mark.parametrize("fill", [None, 0, 255])
def test_train_image_stays_in_signed_range(fill):
    image = noisy_image() if fill is None else tf.fill([37, 53, 3], tf.constant(fill, tf.uint8))
    for seed in tf.random.experimental.stateless_split(tf.constant([5, 6], tf.int64), 24):
        out = augment.train_image(image, 24, seed)
        assert out.shape == (24, 24, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= -1.0 and float(tf.reduce_max(out)) <= 1.0


def test_train_jpeg_is_deterministic_eagerly_and_in_tf_data():
    jpeg = tf.io.encode_jpeg(noisy_image(40, 56)).numpy()
    seeds = tf.constant([[7, 8], [7, 8], [9, 10]], tf.int64)
    eager = [augment.train_jpeg(jpeg, 24, seed).numpy() for seed in seeds]
    mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: augment.train_jpeg(jpeg, 24, seed), num_parallel_calls=2)
        .as_numpy_iterator())
    np.testing.assert_array_equal(eager[0], eager[1])
    assert not np.array_equal(eager[0], eager[2])
    for a, b in zip(eager, mapped):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_distort_color_changes_4_of_5_images_and_clips_once_at_the_end():
    image = augment.to_unit_range(noisy_image())
    seeds = tf.random.experimental.stateless_split(tf.constant([1, 1], tf.int64), 200)
    unchanged = 0
    for seed in seeds[:100]:
        out = augment.distort_color(image, seed)
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
        unchanged += np.array_equal(out.numpy(), image.numpy())
    assert 10 <= unchanged <= 30                         # the no-change case: p = 1/5
    # By hand, with the same per-op seeds: the four ops in the drawn order,
    # no clipping in between, one clip at the end.
    bright = image * 0.2 + 0.75                          # brightness / contrast leave [0, 1]
    by_hand = {"brightness": lambda x, s: tf.image.stateless_random_brightness(
                   x, augment.BRIGHTNESS_MAX_DELTA, s),
               "saturation": lambda x, s: tf.image.stateless_random_saturation(
                   x, *augment.SATURATION_RANGE, s),
               "hue": lambda x, s: tf.image.stateless_random_hue(x, augment.HUE_MAX_DELTA, s),
               "contrast": lambda x, s: tf.image.stateless_random_contrast(
                   x, *augment.CONTRAST_RANGE, s)}
    slot = {"brightness": 1, "saturation": 2, "hue": 3, "contrast": 4}
    checked = set()
    for seed in seeds:
        parts = augment.split_seed(seed, 5)
        case = int(tf.random.stateless_uniform([], parts[0], 0, 5, dtype=tf.int32))
        if case == 4 or case in checked:
            continue
        expected = bright
        for name in augment.COLOR_ORDERS[case]:
            expected = by_hand[name](expected, parts[slot[name]])
        np.testing.assert_allclose(augment.distort_color(bright, seed).numpy(),
                                   tf.clip_by_value(expected, 0.0, 1.0).numpy(), atol=1e-6)
        checked.add(case)
    assert checked == {0, 1, 2, 3}


def test_eval_image_is_a_bilinear_resize_scaled_to_signed_range():
    image = noisy_image()
    expected = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [20, 20], "bilinear")
    np.testing.assert_allclose(augment.eval_image(image, 20).numpy(),
                               expected.numpy() * 2.0 - 1.0, atol=1e-6)
    cropped = augment.eval_image(image, 20, central_fraction=0.5).numpy()
    assert cropped.shape == (20, 20, 3) and not np.allclose(cropped, expected.numpy() * 2 - 1)
