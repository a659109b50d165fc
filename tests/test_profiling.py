"""The eq. 11 FLOPs counter against hand counts, and the paper's EfficientNet-B0 numbers."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tnet_tf import profiling

layers = tf.keras.layers


def _conv_output_size(size, kernel, stride, padding):
    if padding == "valid":
        return (size - kernel) // stride + 1
    return -(-size // stride)  # SAME: ceil(size / stride)


def _single_layer_model(layer, input_shape):
    inputs = tf.keras.Input(input_shape)
    return tf.keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("padding,stride", [("valid", 1), ("same", 2), ("valid", 2)])
def test_conv2d_counts_cin_k2_hout_wout_cout(padding, stride):
    height, width, c_in, c_out, kernel = 9, 11, 3, 5, 3
    model = _single_layer_model(
        layers.Conv2D(c_out, kernel, strides=stride, padding=padding), (height, width, c_in))
    h_out = _conv_output_size(height, kernel, stride, padding)
    w_out = _conv_output_size(width, kernel, stride, padding)
    assert model.output_shape[1:3] == (h_out, w_out)  # the hand geometry is right
    expected = c_in * kernel * kernel * h_out * w_out * c_out
    assert profiling.count_flops_eq11(model, (height, width, c_in)) == expected


def test_rectangular_kernel_and_bias_add_not_counted():
    model = _single_layer_model(layers.Conv2D(4, (1, 5), use_bias=True), (6, 8, 2))
    assert profiling.count_flops_eq11(model, (6, 8, 2)) == 2 * 1 * 5 * 6 * 4 * 4


def test_depthwise_conv_counts_k2_hout_wout_c_multiplier():
    c_in, multiplier, kernel = 4, 2, 3
    model = _single_layer_model(
        layers.DepthwiseConv2D(kernel, strides=2, padding="same", depth_multiplier=multiplier),
        (8, 7, c_in))
    h_out, w_out = math.ceil(8 / 2), math.ceil(7 / 2)
    expected = kernel * kernel * h_out * w_out * c_in * multiplier
    assert profiling.count_flops_eq11(model, (8, 7, c_in)) == expected


def test_dense_counts_inputs_times_units():
    inputs = tf.keras.Input((4, 4, 2))
    flat = layers.Dense(10)(layers.Flatten()(inputs))  # 32 -> 10
    per_pixel = layers.Dense(3)(inputs)  # rank-4 Dense: a 2 -> 3 matmul at each of 16 pixels
    model = tf.keras.Model(inputs, [flat, per_pixel])
    assert profiling.count_flops_eq11(model, (4, 4, 2)) == 32 * 10 + 16 * 2 * 3


def test_branching_model_sums_branches_and_ignores_elementwise_ops():
    inputs = tf.keras.Input((10, 10, 3))
    a = layers.Conv2D(8, 3, padding="same")(inputs)
    a = layers.BatchNormalization()(a)
    a = layers.ReLU()(a)
    b = layers.Conv2D(8, 1)(inputs)
    merged = layers.Add()([a, b])
    side = layers.Conv2D(4, 3, strides=2, padding="valid")(merged)  # 10 -> 4
    pooled = layers.Concatenate()([layers.GlobalAveragePooling2D()(merged),
                                   layers.GlobalAveragePooling2D()(side)])
    resized = tf.image.resize(inputs, (5, 5))  # resizing is not counted
    logits = layers.Dense(7)(pooled) + layers.Dense(7)(layers.Flatten()(resized))
    model = tf.keras.Model(inputs, logits)

    expected = (3 * 9 * 10 * 10 * 8  # branch a
                + 3 * 1 * 10 * 10 * 8  # branch b
                + 8 * 9 * 4 * 4 * 4  # strided conv on the sum
                + (8 + 4) * 7  # classifier on pooled features
                + 5 * 5 * 3 * 7)  # classifier on the resized image
    assert profiling.count_flops_eq11(model, (10, 10, 3)) == expected


def test_plain_callable_matmul_einsum_and_call_kwargs():
    weights = tf.constant(np.ones([6, 5], np.float32))

    def fn(images, scale):  # no `training` argument: called without it
        rows = tf.reshape(images, [1, 4, 6]) * scale
        batched = tf.matmul(rows, rows, transpose_b=True)  # [1, 4, 4] from K = 6
        projected = tf.einsum("bik,kn->bin", rows, weights)  # [1, 4, 5] from K = 6
        return batched, projected

    assert profiling.count_flops_eq11(fn, (2, 2, 6), scale=2.0) == 4 * 4 * 6 + 4 * 5 * 6


def test_nested_function_map_fn_and_cond_are_walked():
    weights = tf.constant(np.ones([4, 5], np.float32))

    @tf.function
    def inner(rows):
        return tf.matmul(rows, weights)

    def fn(images):
        row = tf.reshape(images, [1, 4])
        nested = inner(row)  # 4 * 5
        mapped = tf.map_fn(lambda r: tf.matmul(r[None], weights)[0],
                           tf.tile(row, [3, 1]))  # 3 iterations of 4 * 5
        branch = tf.cond(tf.reduce_sum(images) > 0,
                         lambda: tf.matmul(tf.tile(row, [2, 1]), weights),  # 2 * 4 * 5
                         lambda: tf.zeros([2, 5]))  # the larger branch counts
        return nested, mapped, branch

    assert profiling.count_flops_eq11(fn, (2, 2, 1)) == 20 + 3 * 20 + 40


def test_dynamic_shapes_are_rejected_with_the_op_name():
    def fn(images):
        kept = tf.boolean_mask(tf.reshape(images, [-1, 2]), tf.constant([True, False]))
        return tf.matmul(kept, tf.ones([2, 3]))

    with pytest.raises(ValueError, match="dynamic shape"):
        profiling.count_flops_eq11(fn, (1, 2, 2))


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        profiling.count_flops_eq11(lambda x: x, (32, 32))


def test_efficientnet_b0_at_224_matches_table_2():
    model = tf.keras.applications.EfficientNetB0(weights=None, classes=62)
    flops = profiling.count_flops_eq11(model, (224, 224, 3))
    assert flops == pytest.approx(0.39e9, rel=0.02)
    assert profiling.count_params(model) == 4_128_993  # Table 2: 4.13 M
    assert profiling.count_params(model) == model.count_params()
    # TensorFlow counts multiply-adds as 2 FLOPs, plus element-wise ops.
    assert 1.8 * flops <= profiling.count_flops_profiler(model, (224, 224, 3)) <= 2.6 * flops


@pytest.mark.slow
@pytest.mark.parametrize("size,gflops", [(448, 1.54), (896, 6.18)])
def test_efficientnet_b0_at_high_resolution_matches_table_2(size, gflops):
    model = tf.keras.applications.EfficientNetB0(
        weights=None, classes=62, input_shape=(size, size, 3))
    assert profiling.count_flops_eq11(model, (size, size, 3)) == pytest.approx(gflops * 1e9,
                                                                               rel=0.02)


def _tiny_model():
    inputs = tf.keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inputs)
    return tf.keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(x)))


def test_profiler_count_is_about_twice_eq11_on_a_conv_model():
    model = _tiny_model()
    eq11 = profiling.count_flops_eq11(model, (16, 16, 3))
    assert eq11 == 3 * 9 * 8 * 8 * 4 + 4 * 5
    assert 1.8 * eq11 <= profiling.count_flops_profiler(model, (16, 16, 3)) <= 2.6 * eq11


def test_count_params_builds_an_unbuilt_subclassed_model():
    class Head(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3)
            self.batch_norm = layers.BatchNormalization()

        def call(self, images, training=False):
            return self.batch_norm(self.conv(images), training=training)

    model = Head()
    with pytest.raises(ValueError, match="not built"):
        profiling.count_params(model)
    # conv 3*3*3*4 + 4; batch norm: gamma, beta (trainable) + moving mean, variance.
    assert profiling.count_params(model, (8, 8, 3)) == 3 * 9 * 4 + 4 + 4 * 4


def test_time_and_memory_return_positive_finite_numbers():
    model = _tiny_model()
    mean, std = profiling.measure_time(model, (16, 16, 3), batch_size=2, num_batches=3,
                                       warmup_batches=1)
    assert np.isfinite(mean) and mean > 0
    assert np.isfinite(std) and std >= 0
    peak, method = profiling.measure_peak_memory(model, (16, 16, 3), batch_size=2)
    assert peak > 10 * 2**20  # any process holding TensorFlow uses more than 10 MiB
    expected = (profiling.MEMORY_DEVICE_PEAK if tf.config.list_logical_devices("GPU")
                else profiling.MEMORY_PROCESS_RSS)
    assert method == expected
    with pytest.raises(ValueError, match="num_batches"):
        profiling.measure_time(model, (16, 16, 3), batch_size=2, num_batches=0)


def test_rows_and_table():
    rows = [
        profiling.ProfileRow("tnet", 896, (2, 1), params=4_559_600, flops=1_940_000_000,
                             ms_per_image=4.71, ms_per_image_std=0.05),
        profiling.ProfileRow("baseline", 224, params=4_128_993, flops=390_000_000),
    ]
    record = rows[0].to_dict()
    for key in ("model", "input_size", "locations", "params", "flops", "flops_profiler",
                "ms_per_image", "ms_per_image_std", "peak_memory_bytes", "memory_method"):
        assert key in record
    assert record["locations"] == [2, 1] and record["flops_profiler"] is None
    lines = profiling.format_table(rows).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert "1.94" in lines[2] and "4.56" in lines[2] and "4.71 ± 0.05" in lines[2]
    assert "2,1 (total 4)" in lines[2]
    assert "0.39" in lines[3] and "4.13" in lines[3]
