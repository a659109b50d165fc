"""Configs and presets: validation, overrides and the toy preset."""
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf.config import PRESETS


def test_every_preset_builds_a_valid_config():
    for name in PRESETS:
        config = tnet_tf.get_preset(name)
        assert tnet_tf.reachable_levels(config.input_size, config.base_resolution,
                                        config.cell_fraction) >= config.num_levels


def test_overrides_merge_into_the_backbone_and_unknown_fields_fail():
    config = tnet_tf.get_preset("tiny", backbone={"norm": "batch"}, input_size=96)
    assert (config.backbone.name, config.backbone.width, config.backbone.norm) == \
        ("compact", 8, "batch")
    assert tnet_tf.get_preset("fmow", backbone="efficientnet-b2").backbone.name == \
        "efficientnet-b2"
    with pytest.raises(ValueError, match="unknown TNetConfig field"):
        tnet_tf.get_preset("tiny", grid=4)
    with pytest.raises(ValueError, match="unknown preset 'toy'"):
        tnet_tf.get_preset("toy")
    with pytest.raises(ValueError, match="level 2 asks for 10 locations; a 3x3 grid has 9"):
        tnet_tf.get_preset("tiny", locations=(10,))


def test_tiny_preset_is_small_and_runs():
    config = tnet_tf.get_preset("tiny")
    model = tnet_tf.TNet(config)
    out = model(tf.zeros([2, 64, 64, 3]), training=False)
    assert out["logits"].shape == (2, 5) and out["cells"].shape == (2, 2)
    assert model.count_params() < 200_000
