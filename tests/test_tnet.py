"""TNet behaviour on a tiny configuration (compact backbone, 32 px base)."""
import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import geometry
from conftest import release_cell, tiny_config


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(1)
    return tnet_tf.TNet(tiny_config())


@pytest.fixture(scope="module")
def images():
    return tf.random.stateless_uniform([3, 128, 128, 3], seed=[1, 2], minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("locations, features", [([0], 1), ([1], 2), ([3], 4), ([2, 1], 5),
                                                 ([2, 2], 7), ([3, 2], 10), ([9, 9], 91)])
def test_location_budget_sets_output_shapes(model, images, locations, features):
    out = model(images, locations=locations)
    attended = features - 1
    assert out["logits"].shape == (3, 5)
    assert out["feature_logits"].shape == (3, features, 5)
    assert out["features"].shape == (3, features, 8 * 8)
    assert out["cells"].shape == out["location_log_probs"].shape == (3, attended)
    assert out["locations"] is out["cells"]          # the deprecated alias, for one release
    assert out["feature_levels"].shape == out["feature_parents"].shape == (features,)
    levels_used = 1 + sum(1 for k in locations if k)
    assert len(out["boxes"]) == levels_used
    assert [b.shape[1] for b in out["boxes"]] == [int(np.prod(locations[:i])) for i in
                                                  range(levels_used)]
    np.testing.assert_allclose(out["feature_weights"].numpy(), 1.0 / features, rtol=1e-6)


def test_boxes_and_cells_follow_the_chosen_locations(model, images):
    out = model(images, locations=[2, 1])
    cells = geometry.grid_boxes(3, 0.5)
    locations = out["cells"].numpy()
    probs = [p.numpy() for p in out["location_probs"]]
    level2, level3 = out["boxes"][1].numpy(), out["boxes"][2].numpy()
    np.testing.assert_array_equal(out["feature_levels"].numpy(), [1, 2, 2, 3, 3])
    np.testing.assert_array_equal(out["feature_parents"].numpy(), [-1, 0, 0, 1, 2])
    for b in range(3):
        # Level 2: the two most probable cells of the level-1 distribution, best first.
        top2 = np.argsort(-probs[0][b, 0])[:2]
        np.testing.assert_array_equal(locations[b, :2], top2)
        np.testing.assert_allclose(level2[b], cells[top2], atol=1e-6)
        for parent in range(2):
            child = np.argmax(probs[1][b, parent])
            assert locations[b, 2 + parent] == child
            np.testing.assert_allclose(level3[b, parent],
                                       geometry.compose_boxes(level2[b, parent], cells[child]),
                                       atol=1e-6)
        np.testing.assert_allclose(out["location_log_probs"].numpy()[b],
                                   np.log([probs[0][b, 0, top2[0]], probs[0][b, 0, top2[1]],
                                           probs[1][b, 0, locations[b, 2]],
                                           probs[1][b, 1, locations[b, 3]]]), atol=1e-5)


def test_zero_locations_equal_the_level1_only_prediction(model, images):
    zero = model(images, locations=[0])
    one_level = model(images, locations=[])
    # Second code path: resize the whole image and run the modules by hand.
    resized = tf.image.resize(images, [32, 32], method="bilinear", antialias=False)
    _, vector = model.backbone(resized)
    code = geometry.positional_code(tf.zeros([3, 1]), tf.zeros([3, 1]), tf.zeros([3, 1]), 24)
    by_hand = model.classifier(model.positional_encoding([vector[:, None], code])[:, 0])
    np.testing.assert_allclose(zero["logits"].numpy(), by_hand.numpy(), atol=1e-4)
    np.testing.assert_allclose(one_level["logits"].numpy(), by_hand.numpy(), atol=1e-4)
    assert zero["location_probs"][0].shape == (3, 1, 9)
    assert zero["cells"].shape == (3, 0)


def test_attending_changes_the_prediction_and_the_mean_of_features(model, images):
    out = model(images, locations=[2])
    pooled = tf.reduce_mean(out["features"], axis=1)
    np.testing.assert_allclose(out["logits"].numpy(), model.classifier(pooled).numpy(), atol=1e-5)
    assert not np.allclose(out["logits"].numpy(), model(images, locations=[0])["logits"].numpy())


def test_level2_glimpse_is_the_cell_cropped_from_the_full_image(model, images):
    # 64 px input, 32 px base: level-2 cells are 32 px, so glimpses are exact pixel copies.
    small = images[:, :64, :64]
    out = model(small, locations=[9])
    cells = geometry.grid_boxes(3, 0.5)
    for b in range(3):
        for slot, cell in enumerate(out["cells"].numpy()[b]):
            y, x = (cells[cell, :2] * 64).astype(int)
            _, vector = model.backbone(small[b:b + 1, y:y + 32, x:x + 32])
            code = geometry.positional_code(tf.constant([[float(x // 16)]]),
                                            tf.constant([[float(y // 16)]]),
                                            tf.ones([1, 1]), 24)
            expected = model.positional_encoding([vector[:, None], code])
            np.testing.assert_allclose(out["features"].numpy()[b, 1 + slot], expected[0, 0],
                                       atol=1e-4)


def test_sampling_without_replacement_follows_the_distribution():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    log_probs = tf.math.log(tf.constant(np.tile(probs, [20000, 1]), tf.float32))
    picks = tnet_tf.select_cells(log_probs, 2, "sample", seed=3).numpy()
    assert np.all(picks[:, 0] != picks[:, 1])
    first = np.bincount(picks[:, 0], minlength=4) / len(picks)
    np.testing.assert_allclose(first, probs, atol=0.015)
    # P(second = j) = sum_i p_i p_j / (1 - p_i), i != j.
    second = np.bincount(picks[:, 1], minlength=4) / len(picks)
    exact = [sum(probs[i] * probs[j] / (1 - probs[i]) for i in range(4) if i != j)
             for j in range(4)]
    np.testing.assert_allclose(second, exact, atol=0.015)
    top = tnet_tf.select_cells(log_probs[:1], 3, "top_k").numpy()
    np.testing.assert_array_equal(top, [[0, 1, 2]])


def test_sampled_locations_vary_and_are_distinct(model, images):
    out = model(images, locations=[3], selection="sample")
    locations = out["cells"].numpy()
    assert all(len(set(row)) == 3 for row in locations)
    draws = {tuple(model(images, locations=[3], selection="sample")["cells"].numpy()[0])
             for _ in range(8)}
    assert len(draws) > 1


def test_random_cells_ignore_the_distribution_when_switched_on():
    # A distribution that puts almost all mass on cells 0 and 1.
    log_probs = tf.math.log(tf.tile(tf.constant([[0.49, 0.49] + [0.02 / 7] * 7]), [4000, 1]))
    for switch in (False, tf.constant(False)):
        chosen = tnet_tf.select_cells(log_probs, 2, "top_k", random_cells=switch).numpy()
        assert (np.sort(chosen, axis=1) == [0, 1]).all()
    for selection in ("top_k", "sample"):
        chosen = tnet_tf.select_cells(log_probs, 2, selection,
                                      random_cells=tf.constant(True)).numpy()
        assert all(a != b for a, b in chosen)
        counts = np.bincount(chosen.ravel(), minlength=9) / chosen.size
        np.testing.assert_allclose(counts, np.full(9, 1 / 9), atol=0.02)


def test_bad_inputs_get_clear_errors(model, images):
    with pytest.raises(ValueError, match="cannot reach 3 levels"):
        model(images[:, :64, :64], locations=[2, 1])
    with pytest.raises(ValueError, match="level 2 asks for 10 locations; a 3x3 grid has 9"):
        model(images, locations=[10])
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels; got 4"):
        model(tf.zeros([1, 128, 128, 4]))
    with pytest.raises(ValueError, match="smaller than the 32 px base"):
        model(tf.zeros([1, 16, 16, 3]), locations=[0])
    with pytest.raises(ValueError, match="level 3 cannot attend cells when level 2 attends none"):
        model(images, locations=[0, 1])
    with pytest.raises(ValueError, match="locations: level 2 asks for 12"):
        tiny_config(locations=(12,))


def test_reachable_levels_follow_the_paper_sizes():
    assert tnet_tf.reachable_levels(448, 224, 0.5) == 2
    assert tnet_tf.reachable_levels(896, 224, 0.5) == 3
    assert tnet_tf.reachable_levels(224, 77, 0.34375) == 2
    assert tnet_tf.reachable_levels(448, 224, 0.35) == 2
    assert tnet_tf.reachable_levels(224, 224, 0.5) == 1


def test_feature_weighting_and_context_variant_run():
    config = tiny_config(feature_weighting=True, location_module="context",
                         positional_fusion="concat_dense", code_variant="release",
                         initializer="glorot")
    net = tnet_tf.TNet(config)
    out = net(tf.zeros([2, 64, 64, 3]), locations=[3])
    weights = out["feature_weights"].numpy()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    pooled = tf.reduce_sum(out["features"] * weights[..., None], axis=1)
    np.testing.assert_allclose(out["logits"].numpy(), net.classifier(pooled).numpy(), atol=1e-5)


def test_config_round_trip_and_weights_restore(model, images, tmp_path):
    clone = tnet_tf.TNet.from_config(model.get_config())
    assert clone.config == model.config
    clone(images[:1], locations=[1])
    model.save_weights(str(tmp_path / "ckpt"))
    clone.load_weights(str(tmp_path / "ckpt"))
    np.testing.assert_allclose(clone(images, locations=[2, 1])["logits"].numpy(),
                               model(images, locations=[2, 1])["logits"].numpy(), atol=1e-5)


def test_model_runs_inside_tf_function_with_a_dynamic_batch(model, images):
    @tf.function(input_signature=[tf.TensorSpec([None, 128, 128, 3])])
    def predict(batch):
        return model(batch, locations=[2, 1], training=False)["logits"]

    np.testing.assert_allclose(predict(images).numpy(),
                               model(images, locations=[2, 1])["logits"].numpy(), atol=1e-5)


def test_baseline_classifier_at_any_size():
    config = tiny_config()
    for size in (32, 96):
        baseline = tnet_tf.Classifier(config, input_size=size)
        assert baseline(tf.zeros([2, size, size, 3])).shape == (2, 5)
    with pytest.raises(ValueError, match="96, 96, 3"):
        baseline(tf.zeros([2, 64, 64, 3]))


def test_location_budget_changes_the_cost_linearly(model):
    from tnet_tf.profiling import count_flops_eq11

    def flops(locations):
        return count_flops_eq11(model, (128, 128, 3), locations=locations)

    zero, one = flops([0]), flops([1])
    per_location = one - zero            # one more glimpse: backbone + encoding + its logits
    assert per_location > 0
    assert flops([3]) - zero == 3 * per_location
    # A third level adds 1 glimpse per level-2 parent plus the location module of each parent.
    location_module = flops([2, 1]) - flops([2]) - 2 * per_location
    assert location_module > 0
    assert flops([2, 2]) - flops([2, 1]) == 2 * per_location


def test_mixed_precision_keeps_float32_outputs(images):
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = tnet_tf.TNet(tiny_config())
        out = net(images, locations=[2, 1])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert out["features"].dtype == tf.bfloat16
    for key in ("logits", "feature_logits", "location_log_probs", "feature_weights"):
        assert out[key].dtype == tf.float32, key
        assert np.all(np.isfinite(out[key].numpy())), key


def test_batch_norm_keeps_statistics_per_level(images):
    # One training call: each level's moving means in the first normalisation
    # layer move from 0 by (1 - momentum) times the batch mean of that level's
    # input: the whole image at 32 px, then the glimpses of levels 2 and 3.
    tf.keras.utils.set_random_seed(3)
    model = tnet_tf.TNet(tiny_config(backbone={"norm": "batch"}))
    out = model(images, locations=[2, 1], training=True)
    conv = model.backbone.get_layer("stage1_conv1")
    norm = model.backbone.get_layer("stage1_bn1")

    def crops(boxes):
        flat = tf.reshape(boxes, [-1, 4])
        return tf.image.crop_and_resize(
            images, geometry.crop_and_resize_boxes(flat, 128, 128, 32),
            tf.repeat(tf.range(3), boxes.shape[1]), [32, 32])

    means = [norm.norms[level].moving_mean.numpy() for level in range(3)]
    for level, boxes in enumerate(out["boxes"]):
        by_hand = 0.01 * tf.reduce_mean(conv(crops(boxes)), axis=[0, 1, 2])
        np.testing.assert_allclose(means[level], by_hand, rtol=1e-3, atol=1e-9)
    assert not np.allclose(means[1], means[2], rtol=0.1, atol=0)

    # In inference too: moving level 3's statistics changes level 3's features
    # and leaves those of levels 1 and 2 (and so the attended cells) as they were.
    before = model(images, locations=[2, 1])
    norm.norms[2].moving_mean.assign_add(tf.fill(means[2].shape, 5.0))
    after = model(images, locations=[2, 1])
    np.testing.assert_array_equal(after["cells"], before["cells"])
    np.testing.assert_array_equal(after["features"][:, :3], before["features"][:, :3])
    # (An untrained network's later layers damp the shift, but it does arrive.)
    assert np.abs(after["features"][:, 3:] - before["features"][:, 3:]).min() > 0


def test_integer_grid_glimpses_are_the_release_cells_resized():
    # 310 px, 5 x 5 cells of 34.375 %: 107 px cells on a 51 px stride (one zero row
    # and column before), their cells 37 px on an 18 px stride (1 before, 1 after).
    config = tiny_config(grid_size=5, cell_fraction=0.34375, integer_grid=True, input_size=310)
    model = tnet_tf.TNet(config)
    images = tf.random.stateless_uniform([2, 310, 310, 3], [1, 2], -1.0, 1.0)
    chosen = tf.constant([[0, 7, 4, 20], [24, 3, 12, 0]])   # level 2 x 2, then one per glimpse
    out = model(images, locations=[2, 1], chosen_locations=chosen)
    n = config.grid_size
    for b in range(2):
        for slot, chain in enumerate([[0], [1], [0, 2], [1, 3]]):
            cells = [int(chosen[b, i]) for i in chain]
            patch = images[b].numpy()
            for cell in cells:
                patch = release_cell(patch, cell, n, config.cell_fraction)
            glimpse = tf.image.resize(patch[None], [32, 32], method="bilinear", antialias=False)
            _, vector = model.backbone(glimpse)
            rows, cols = zip(*(divmod(cell, n) for cell in cells))
            x = sum(c * n ** (len(cols) - 1 - i) for i, c in enumerate(cols))
            y = sum(r * n ** (len(rows) - 1 - i) for i, r in enumerate(rows))
            code = geometry.positional_code(tf.constant([[float(x)]]), tf.constant([[float(y)]]),
                                            tf.constant([[float(len(cells))]]), 24)
            expected = model.positional_encoding([vector[:, None], code])
            np.testing.assert_allclose(out["features"].numpy()[b, 1 + slot], expected[0, 0],
                                       atol=1e-4)
    # Boxes are the pixel windows over the image side: cell 7 (row 1, col 2) of the image.
    np.testing.assert_allclose(out["boxes"][1].numpy()[0, 1] * 310,
                               [51 - 1, 102 - 1, 51 - 1 + 107, 102 - 1 + 107], atol=1e-3)
    # The same in a graph with a dynamic image size, and compiled by XLA (static sizes).
    dynamic = tf.function(lambda x: model(x, locations=[2, 1], chosen_locations=chosen),
                          input_signature=[tf.TensorSpec([None, None, None, 3])])
    model.xla_compatible = True      # level 1's crop by gathers (no CropAndResize in XLA)
    compiled = tf.function(lambda x: model(x, locations=[2, 1], chosen_locations=chosen),
                           jit_compile=True)
    for function in (dynamic, compiled):
        np.testing.assert_allclose(function(images)["features"], out["features"], atol=1e-4)
