"""An optional TensorFlow Datasets source feeding the same preprocessing.

Reads an already prepared TFDS dataset from a local `data_dir`
(`download=False`: nothing is fetched), keeps the images JPEG-encoded and
hands them to `pipeline.preprocess_and_batch`, so augmentation, evaluation
resize, the bbox-crop variant and batching are those of the TFRecord
pipeline:

    config = input_config_for("cub", file_pattern="", image_size=448, batch_size=64)
    dataset = make_tfds_dataset("caltech_birds2011", "train", "/data/tfds", config)

Supported builders: "imagenet2012" (no boxes) and "caltech_birds2011" (one
box per image, `bbox`).
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tnet_tf.data.pipeline import InputConfig, preprocess_and_batch

SUPPORTED = ("imagenet2012", "caltech_birds2011")
# Features not used by the pipeline whose decoding is skipped.
_UNDECODED = ("image", "segmentation_mask")


def tfds_example_to_input(example) -> dict:
    """Maps a TFDS example (image still encoded) to the pipeline's example dict."""
    label = tf.cast(example["label"], tf.int32)
    if "bbox" in example:
        boxes = tf.reshape(tf.cast(example["bbox"], tf.float32), [-1, 4])
    else:
        boxes = tf.zeros([0, 4], tf.float32)
    return {"encoded": example["image"], "label": label, "boxes": boxes,
            "box_labels": tf.fill([tf.shape(boxes)[0]], label)}


def make_tfds_dataset(name: str, split: str, data_dir: str, config: InputConfig,
                      input_context: Optional[tf.distribute.InputContext] = None
                      ) -> tf.data.Dataset:
    """(image, label) batches of a locally prepared TFDS dataset."""
    import tensorflow_datasets as tfds  # optional dependency, imported on use

    if name not in SUPPORTED:
        raise ValueError(f"unsupported TFDS dataset {name!r}; choose one of "
                         f"{', '.join(SUPPORTED)}")
    read_config = tfds.ReadConfig(shuffle_seed=config.seed, input_context=input_context,
                                  interleave_cycle_length=config.cycle_length)
    builder = tfds.builder(name, data_dir=data_dir)
    decoders = {key: tfds.decode.SkipDecoding() for key in _UNDECODED
                if key in builder.info.features}
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False,
                        shuffle_files=config.training, decoders=decoders,
                        read_config=read_config)
    repeat = config.training if config.repeat is None else config.repeat
    if repeat:
        dataset = dataset.repeat()
    if config.training:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
    examples = dataset.map(tfds_example_to_input, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=config.ordered)
    batch_size = config.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
    return preprocess_and_batch(examples, config, batch_size)
