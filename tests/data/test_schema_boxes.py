"""The Example schema (ours and the authors') and the box geometry."""
import numpy as np
import pytest
import tensorflow as tf

from tnet_tf.data import boxes as box_lib
from tnet_tf.data import schema


def test_encode_parse_round_trip():
    jpeg = tf.io.encode_jpeg(tf.zeros([6, 8, 3], tf.uint8)).numpy()
    serialized = schema.encode_example(jpeg, 6, 8, 5, "barn", "train/barn/x.jpg",
                                       [(0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)], [5, 7])
    parsed = {k: v.numpy() for k, v in schema.parse_example(serialized).items()}
    assert parsed["encoded"] == jpeg and parsed["label"] == 5 and parsed["text"] == b"barn"
    assert parsed["filename"] == b"train/barn/x.jpg"
    assert (parsed["height"], parsed["width"]) == (6, 8)
    np.testing.assert_array_equal(parsed["boxes"], np.float32([[0.1, 0.2, 0.5, 0.75],
                                                               [0, 0, 1, 1]]))
    assert parsed["box_labels"].tolist() == [5, 7]
    # Deterministic bytes.
    assert serialized == schema.encode_example(jpeg, 6, 8, 5, "barn", "train/barn/x.jpg",
                                               [(0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)],
                                               [5, 7])


def test_authors_style_records_parse():
    # Boxes without box labels, and a record with only the image and its label.
    feature = {
        schema.ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8"])),
        schema.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
        schema.BOX_YMIN: tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        schema.BOX_XMIN: tf.train.Feature(float_list=tf.train.FloatList(value=[0.2])),
        schema.BOX_YMAX: tf.train.Feature(float_list=tf.train.FloatList(value=[0.3])),
        schema.BOX_XMAX: tf.train.Feature(float_list=tf.train.FloatList(value=[0.4])),
    }
    with_boxes = tf.train.Example(features=tf.train.Features(feature=feature))
    parsed = schema.parse_example(with_boxes.SerializeToString())
    assert parsed["box_labels"].numpy().tolist() == [3]
    np.testing.assert_allclose(parsed["boxes"].numpy(), [[0.1, 0.2, 0.3, 0.4]])
    minimal = {k: feature[k] for k in (schema.ENCODED, schema.LABEL)}
    parsed = schema.parse_example(tf.train.Example(
        features=tf.train.Features(feature=minimal)).SerializeToString())
    assert parsed["boxes"].shape == (0, 4) and parsed["label"].numpy() == 3


def test_shard_names():
    assert schema.shard_name("train", 3, 512) == "train-00003-of-00512"
    assert schema.shard_name("validation", 0, 128) == "validation-00000-of-00128"


@pytest.mark.parametrize("ratio,fraction", [(1.0, 0.15), (0.5, 0.15), (0.45, 0.2), (0.4, 0.2),
                                            (0.3, 0.3), (0.25, 0.5), (0.2, 0.5),
                                            (0.15, 1.0), (0.1, 1.0), (0.05, 2.0), (0.0, 2.0)])
def test_context_fraction_table(ratio, fraction):
    assert float(box_lib.context_fraction(ratio)) == pytest.approx(fraction)


def test_add_context_grows_half_on_each_side_and_clips():
    # Height ratio 0.2 -> +50 %; width ratio 0.05 -> +200 %.
    grown = box_lib.add_context([0.4, 0.5, 0.6, 0.55]).numpy()
    np.testing.assert_allclose(grown, [0.35, 0.45, 0.65, 0.6], atol=1e-6)
    # Width 0.6 -> +15 %, clipped at the image border.
    np.testing.assert_allclose(box_lib.add_context([0.0, 0.4, 1.0, 1.0]).numpy(),
                               [0.0, 0.355, 1.0, 1.0], atol=1e-6)


def test_pixel_window_covers_the_box_inside_the_image():
    window = [int(v) for v in box_lib.pixel_window([0.1, 0.25, 0.55, 1.0], 20, 40)]
    assert window == [2, 10, 9, 30]
    window = [int(v) for v in box_lib.pixel_window([0.5, 0.5, 0.5, 0.5], 20, 40)]
    assert window[2:] == [1, 1]
    inner = box_lib.box_in_window([0.1, 0.25, 0.55, 1.0], [2, 10, 9, 30], 20, 40).numpy()
    np.testing.assert_allclose(inner, [0.0, 0.0, 1.0, 1.0], atol=1e-6)
