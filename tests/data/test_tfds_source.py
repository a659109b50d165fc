"""The TFDS source: same preprocessing as the TFRecord pipeline, nothing downloaded."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tnet_tf.data import pipeline, tfds_source


def fake_birds(builder, split, decoders=None, **kwargs):
    del builder, split, decoders, kwargs
    jpegs = [tf.io.encode_jpeg(tf.fill([30 + i, 40, 3], tf.constant(20 * i, tf.uint8))).numpy()
             for i in range(6)]
    return tf.data.Dataset.from_tensor_slices({
        "image": jpegs, "label": tf.constant([0, 1, 2, 3, 4, 5], tf.int64),
        "bbox": tf.constant([[0.1, 0.2, 0.6, 0.7]] * 6, tf.float32),
        "image/filename": [b"x"] * 6, "label_name": [b"x"] * 6,
        "segmentation_mask": [b"m"] * 6})


def test_caltech_birds_feeds_the_same_preprocessing(tmp_path):
    config = pipeline.input_config_for("cub", file_pattern="", image_size=24, batch_size=4,
                                       training=False)
    with tfds.testing.mock_data(as_dataset_fn=fake_birds):
        dataset = tfds_source.make_tfds_dataset("caltech_birds2011", "test", str(tmp_path),
                                                config)
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
        crops = tfds_source.make_tfds_dataset(
            "caltech_birds2011", "test", str(tmp_path),
            pipeline.InputConfig(file_pattern="", image_size=24, batch_size=6, training=False,
                                 crop_to_boxes=True))
        crop_images, crop_labels = next(iter(crops))
    assert [x.shape for x, _ in batches] == [(4, 24, 24, 3), (2, 24, 24, 3)]
    assert np.concatenate([y for _, y in batches]).tolist() == [0, 1, 2, 3, 4, 5]
    # Uniform images: eval output is exactly the grey level in [-1, 1].
    np.testing.assert_allclose(batches[0][0][1], 20 / 255 * 2 - 1, atol=1e-5)
    assert crop_images.shape == (6, 24, 24, 3) and crop_labels.numpy().tolist() == list(range(6))


def test_imagenet_training_batches_from_mock_data(tmp_path):
    config = pipeline.InputConfig(file_pattern="", image_size=32, batch_size=2, training=True,
                                  seed=1, shuffle_buffer=4)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        images, labels = next(iter(tfds_source.make_tfds_dataset(
            "imagenet2012", "train", str(tmp_path), config)))
    assert images.shape == (2, 32, 32, 3) and images.dtype == tf.float32
    assert float(tf.reduce_min(images)) >= -1 and float(tf.reduce_max(images)) <= 1
    assert labels.dtype == tf.int32


def test_unsupported_builder_is_named(tmp_path):
    with pytest.raises(ValueError, match="unsupported TFDS dataset 'mnist'"):
        tfds_source.make_tfds_dataset("mnist", "train", str(tmp_path),
                                      pipeline.InputConfig(file_pattern=""))
