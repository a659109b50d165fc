"""The release checkpoint reader against the authors' outputs in
../shared/release_fixtures, the key manifests of the ImageNet models, and
the round trip save_checkpoint -> load_model."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import release

from conftest import RELEASE_FIXTURES as FIXTURES, needs_release_fixtures

pytestmark = needs_release_fixtures


@pytest.fixture(scope="module")
def cases():
    return np.load(os.path.join(FIXTURES, "fmow_cases.npz"))


@pytest.fixture(scope="module")
def fmow_tnet():
    return release.load_model(os.path.join(FIXTURES, "fmow_tnet"), "fmow")


def images(cases, size):
    return cases[f"images_{size}"].astype(np.float32) / 127.5 - 1.0


def attended(outputs, grid_cells=9):
    """The release's attended cells: per image one block of n*n per glimpse that
    chose cells (level 1, then the level-2 glimpses by ascending level-1 cell)."""
    cells = outputs["cells"].numpy()
    parents = outputs["feature_parents"].numpy()[1:]          # parent feature of each cell
    result = []
    for row in cells:
        blocks = {}
        for cell, parent in zip(row, parents):
            blocks.setdefault(parent, []).append(cell)
        # Feature 0 (level 1) first; level-2 features in the order of their own cell.
        parent_cell = {feature: row[feature - 1] for feature in blocks if feature > 0}
        order = [0] + sorted((f for f in blocks if f > 0), key=parent_cell.get)
        flat = np.zeros(grid_cells * len(order))
        for index, parent in enumerate(order):
            flat[index * grid_cells + np.array(blocks[parent])] = 1
        result.append(flat)
    return np.array(result)


def relative_error(ours, theirs):
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("size,locations", [(448, [2]), (896, [2, 1])])
def test_fmow_tnet_equals_the_release(fmow_tnet, cases, size, locations):
    key = f"{size}_{'_'.join(map(str, locations))}"
    outputs = fmow_tnet(images(cases, size), locations=locations, training=False)
    assert relative_error(outputs["logits"], cases[f"logits_{key}"]) < 1e-3
    np.testing.assert_array_equal(attended(outputs), cases[f"attended_{key}"])
    np.testing.assert_allclose(outputs["location_probs"][0][:, 0],
                               cases[f"level1_location_probs_{size}"], atol=1e-5)


def test_fmow_backbone_and_metadata(fmow_tnet, cases):
    level1 = tf.image.resize(images(cases, 448), [224, 224])
    _, vector = fmow_tnet.backbone(level1, training=False)
    assert relative_error(vector, cases["level1_vector_448"].reshape(3, -1)) < 1e-4
    assert fmow_tnet.release_metadata["iter"] == 1234
    config = fmow_tnet.config
    assert (config.code_variant, config.grid_indices) == ("release", (2, 6, 10))


def test_fmow_baseline_equals_the_release(cases):
    baseline = release.load_model(os.path.join(FIXTURES, "fmow_baseline", "ckpt-1234"), "fmow",
                                  model="baseline", input_size=224)
    assert isinstance(baseline, tnet_tf.Classifier)
    logits = baseline(images(cases, 224), training=False)
    assert relative_error(logits, cases["baseline_logits_224"]) < 1e-3


def manifest(name):
    with open(os.path.join(FIXTURES, name, "manifest.txt")) as handle:
        rows = [line.split("\t") for line in handle.read().splitlines() if line.strip()]
    keys = {key: json.loads(shape) for key, shape in rows}     # shapes are "[512, 1000]"
    return {k: v for k, v in keys.items()
            if not k.startswith(("optimizer", "_CHECKPOINTABLE", "save_counter"))}


@pytest.mark.parametrize("name,model", [("imagenet_tnet", "tnet"), ("imagenet_baseline", "baseline")])
def test_imagenet_manifests_map_every_key_to_its_layer(name, model, tmp_path):
    keys = manifest(name)
    unescaped = {key[:-len(release.SUFFIX)].replace(".S", "/"): shape
                 for key, shape in keys.items()}
    rng = np.random.default_rng(0)
    values = {key: rng.normal(size=shape).astype(np.float32) for key, shape in unescaped.items()
              if key not in ("iter", "baseline_var")}
    variables = {key: tf.Variable(value) for key, value in values.items()}
    variables["iter"] = tf.Variable(7, dtype=tf.int64)
    variables["baseline_var"] = tf.Variable(0.25)
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt-7"))
    loaded = release.load_model(prefix, "imagenet", model=model)
    names = release.release_names(loaded)
    assert set(names) == set(values)                       # every key, and nothing else
    for key, variable in names.items():
        expected = values[key]
        if key in release.COORDINATE_KERNEL.values():
            expected = release.swap_coordinates(expected)
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)
    # Spot checks that values land in the intended layers.
    backbone = loaded.backbone
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").kernel,
                                  values["feature_extraction/part1/conv2d/kernel"])
    np.testing.assert_array_equal(backbone.get_layer("block4_conv2").kernel,
                                  values["feature_extraction/part3_block1/comp_2/conv2d/kernel"])
    np.testing.assert_array_equal(backbone.get_layer("block14_shortcut").bias,      # 3 + 4 + 6 + 1
                                  values["feature_extraction/part5_block1/shortcut_comp/conv2d/bias"])
    np.testing.assert_array_equal(backbone.get_layer("top_conv").kernel,
                                  values["feature_extraction/part6/conv2d/kernel"])
    assert loaded.release_metadata == {"iter": 7, "baseline_var": 0.25}
    if model == "tnet":
        np.testing.assert_array_equal(
            loaded.location_module.logit_conv.kernel,
            values["location_prediction_earlyLocs/output_linear/kernel"])
        assert loaded.config.grid_indices == (0, 2, 4, 6, 8)


def test_save_checkpoint_round_trip_is_exact(tmp_path):
    config = tnet_tf.get_preset("fmow", input_size=448)
    model = tnet_tf.TNet(config)
    x = tf.random.stateless_uniform([2, 448, 448, 3], [1, 2], -1.0, 1.0)
    model(x, locations=[2], training=False)
    with pytest.raises(ValueError, match="cannot be written in its format"):
        release.save_checkpoint(model, str(tmp_path / "ckpt-1"))     # Keras' input normalisation
    release.release_input(model.backbone)
    for variable in model.trainable_variables + [            # every weight away from its init
            v for v in model.non_trainable_variables if "moving" in v.name]:
        variable.assign(variable + tf.random.stateless_normal(variable.shape, [3, 4]) * 0.01)
    prefix = release.save_checkpoint(model, str(tmp_path / "ckpt-5"), step=5)
    # Exactly the keys of the release's own fMoW TNet checkpoint (optimizer aside).
    keys = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    assert keys - {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter" + release.SUFFIX} == \
        set(manifest("fmow_tnet"))
    loaded = release.load_model(prefix, "fmow", input_size=448,
                                code_variant=config.code_variant, grid_indices=None,
                                integer_grid=config.integer_grid)
    ours, theirs = release.release_names(model), release.release_names(loaded)
    for key in ours:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(model(x, locations=[2])["logits"],
                                  loaded(x, locations=[2])["logits"])
    assert loaded.release_metadata["iter"] == 5


def test_errors_name_the_key_or_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'checkpoint' file"):
        release.load_model(str(tmp_path), "fmow")
    with pytest.raises(FileNotFoundError, match="ckpt-9.index"):
        release.load_model(str(tmp_path / "ckpt-9"), "fmow")
    baseline = os.path.join(FIXTURES, "fmow_baseline")
    with pytest.raises(ValueError, match="no value for feature_posBurn/linear/bias .* 15 more missing"):
        release.load_model(baseline, "fmow")            # a baseline read as a TNet
    with pytest.raises(ValueError, match="logits_layer/linear/kernel has shape"):
        release.load_model(baseline, "fmow", model="baseline", num_classes=10)
    tnet = os.path.join(FIXTURES, "fmow_tnet")
    with pytest.raises(ValueError, match="feature_posBurn/linear/bias .* matches no variable of the fmow baseline"):
        release.load_model(tnet, "fmow", model="baseline")


def test_fine_grained_tnet_follows_the_release_models_and_round_trips(tmp_path):
    # CUB / NABirds TNet-B2 as the release's models_cub.py builds it: the location module
    # reads block 3b's 28 x 28 map at pixels 5, 9, ..., 21 and is as wide as that map
    # (48), the code is a quarter of the 1408-d feature, the feature weighting has its
    # squeeze-excitation (1408 / 4) and output layers.
    config = release.release_config(tnet_tf.get_preset("cub", backbone="efficientnet-b2"))
    assert (config.backbone.location_layer, config.grid_indices) == ("block3b_add",
                                                                     (5, 9, 13, 17, 21))
    model = tnet_tf.TNet(config)
    x = tf.random.stateless_uniform([1, 448, 448, 3], [5, 6], -1.0, 1.0)
    model(x, locations=[3], training=False)
    assert model.backbone.outputs[0].shape[1:3] == (28, 28)
    release.release_input(model.backbone)
    for variable in model.trainable_variables:
        variable.assign(variable + tf.random.stateless_normal(variable.shape, [7, 8]) * 0.01)
    shapes = {name: variable.shape.as_list()
              for name, variable in release.release_names(model).items()}
    expected = {
        "location_prediction/init/conv2d/kernel": [1, 1, 48, 48],
        "location_prediction/se/conv2d_1/kernel": [1, 1, 48, 24],
        "location_prediction/final/conv2d/kernel": [1, 1, 50, 48],     # + 2 coordinates
        "feature_posBurn/linear/kernel": [352, 1408],
        "feat_weighting/se/dense_1/kernel": [1408, 352],
        "feat_weighting/se/dense_2/bias": [1408],
        "feat_weighting/output_linear/kernel": [1408, 1],
        "feature_extraction/logits_layer/linear/kernel": [1408, 200],
        "feature_extraction/part4_block3/depthwise/conv2d/depthwise_kernel": [5, 5, 288, 1],
    }
    assert {name: shapes[name] for name in expected} == expected
    prefix = release.save_checkpoint(model, str(tmp_path / "ckpt-3"))
    loaded = release.load_model(prefix, "cub", backbone="efficientnet-b2")
    assert loaded.config == config
    np.testing.assert_array_equal(model(x, locations=[3])["logits"],
                                  loaded(x, locations=[3])["logits"])
    # B0 reads block 4a's 14 x 14 map (80 channels) at pixels 2, 4, ..., 10.
    fields = release.release_fields(tnet_tf.get_preset("nabirds"))
    assert (fields["backbone"], fields["grid_indices"], fields["location_width"],
            fields["code_size"]) == ({"location_layer": "block4a_project_bn"},
                                     (2, 4, 6, 8, 10), 80, 320)
