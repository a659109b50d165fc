"""tf.data pipelines over small TFRecord shards written with the shared schema."""
import numpy as np
import pytest
import tensorflow as tf

from tnet_tf.data import pipeline, schema

NUM_CLASSES = 5


def smooth_jpeg(index, height=40, width=56):
    coarse = np.random.RandomState(index).randint(0, 256, (1, 3, 3, 3)).astype(np.float32)
    image = tf.cast(tf.round(tf.image.resize(coarse, [height, width]))[0], tf.uint8)
    return tf.io.encode_jpeg(image).numpy()


def write_shards(folder, num_shards=3, per_shard=6, prefix="train"):
    """Record i has label i % 5, one box labelled (i + 1) % 5, and a 40x56 JPEG."""
    paths = []
    for shard in range(num_shards):
        path = str(folder / schema.shard_name(prefix, shard, num_shards))
        with tf.io.TFRecordWriter(path) as writer:
            for k in range(per_shard):
                i = shard * per_shard + k
                writer.write(schema.encode_example(
                    smooth_jpeg(i), 40, 56, i % NUM_CLASSES, "c", f"img{i}.jpg",
                    [(0.25, 0.25, 0.75, 0.5)], [(i + 1) % NUM_CLASSES]))
        paths.append(path)
    return paths


def config(folder, **fields):
    values = dict(file_pattern=str(folder / "train-*"), image_size=32, batch_size=4,
                  seed=3, deterministic=True, shuffle_buffer=16)
    values.update(fields)
    return pipeline.InputConfig(**values)


def batches(dataset, count=None):
    dataset = dataset if count is None else dataset.take(count)
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_training_batches_shapes_dtypes_and_range(tmp_path):
    write_shards(tmp_path)
    dataset = pipeline.make_dataset(config(tmp_path))
    assert dataset.element_spec[0].shape.as_list() == [4, 32, 32, 3]
    assert dataset.element_spec[0].dtype == tf.float32
    assert dataset.element_spec[1].dtype == tf.int32
    result = batches(dataset, 8)  # 32 images: more than one pass over the 18 records
    images = np.concatenate([x for x, _ in result])
    labels = np.concatenate([y for _, y in result])
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < 0 < images.max()
    assert set(labels) <= set(range(NUM_CLASSES)) and len(set(labels)) > 1
    # Inception-style crops around the record's boxes give the same kind of batches.
    around = batches(pipeline.make_dataset(config(tmp_path, crop_around_boxes=True)), 1)
    assert around[0][0].shape == (4, 32, 32, 3) and np.abs(around[0][0]).max() <= 1.0


@pytest.mark.parametrize("fields", [{}, {"cache": "records"}, {"cache": "decoded"},
                                    {"crop_to_boxes": True}],
                         ids=["shards", "cached_records", "cached_decoded", "boxes"])
def test_a_resumed_epoch_layout_continues_the_stream_exactly(tmp_path, fields):
    write_shards(tmp_path)
    settings = config(tmp_path, deterministic=False, **fields)     # the layout forces order
    whole = batches(pipeline.make_dataset(settings, epochs=pipeline.Epochs(5, 3)))
    assert len(whole) == 15
    # 3 epochs of 5 batches (20 images from 18 records: epochs differ in order
    # and augmentation, each a function of (seed, epoch) alone).
    assert not np.array_equal(whole[0][0], whole[5][0])
    for epoch, step in ((1, 2), (0, 4), (2, 0)):
        resumed = batches(pipeline.make_dataset(
            settings, epochs=pipeline.Epochs(5, 3, start_epoch=epoch, start_step=step)))
        assert len(resumed) == 15 - 5 * epoch - step
        for (x1, y1), (x2, y2) in zip(resumed, whole[5 * epoch + step:]):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    with pytest.raises(ValueError, match="epochs"):
        pipeline.make_dataset(config(tmp_path, training=False), epochs=pipeline.Epochs(5, 3))


def test_seeded_deterministic_pipelines_repeat_exactly(tmp_path):
    write_shards(tmp_path)
    first = batches(pipeline.make_dataset(config(tmp_path)), 3)
    second = batches(pipeline.make_dataset(config(tmp_path)), 3)
    other = batches(pipeline.make_dataset(config(tmp_path, seed=4)), 3)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_evaluation_is_one_ordered_pass_of_whole_resized_images(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=6)
    dataset = pipeline.make_dataset(config(tmp_path, training=False, cycle_length=1))
    result = batches(dataset)
    assert [x.shape[0] for x, _ in result] == [4, 2]  # final partial batch kept
    labels = np.concatenate([y for _, y in result])
    assert labels.tolist() == [i % NUM_CLASSES for i in range(6)]
    first = tf.io.decode_jpeg(smooth_jpeg(0))
    expected = tf.image.resize(tf.cast(first, tf.float32) / 255.0, [32, 32]) * 2.0 - 1.0
    np.testing.assert_allclose(result[0][0][0], expected.numpy(), atol=1e-5)


def test_per_dataset_evaluation_resize(tmp_path):
    # The authors evaluate every dataset on the whole image resized, ImageNet included.
    for dataset in ("fmow", "imagenet", "cub", "nabirds", "digits"):
        assert pipeline.input_config_for(dataset, file_pattern="x").eval_central_fraction is None
    write_shards(tmp_path, num_shards=1, per_shard=2)
    imagenet = pipeline.input_config_for(
        "imagenet", file_pattern=str(tmp_path / "train-*"), image_size=32, batch_size=2,
        training=False)
    images = next(iter(pipeline.make_dataset(imagenet)))[0].numpy()
    whole = tf.image.resize(tf.cast(tf.io.decode_jpeg(smooth_jpeg(0)), tf.float32) / 255.0,
                            [32, 32]) * 2.0 - 1.0
    np.testing.assert_allclose(images[0], whole.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        pipeline.input_config_for("mnist", file_pattern="x")


def test_megapixel_mnist_resizes_with_antialias(tmp_path):
    # Its 2-3 px strokes fall between the samples of a plain 3x bilinear downscale.
    assert not pipeline.input_config_for("fmow", file_pattern="x").antialias
    write_shards(tmp_path, num_shards=1, per_shard=2)
    inputs = pipeline.input_config_for(
        "megapixel_mnist", file_pattern=str(tmp_path / "train-*"), image_size=16, batch_size=2,
        training=False)
    images = next(iter(pipeline.make_dataset(inputs)))[0].numpy()
    pixels = tf.cast(tf.io.decode_jpeg(smooth_jpeg(1)), tf.float32) / 255.0
    smooth = tf.image.resize(pixels, [16, 16], antialias=True) * 2.0 - 1.0
    np.testing.assert_allclose(images[1], smooth.numpy(), atol=1e-5)
    plain = tf.image.resize(pixels, [16, 16]) * 2.0 - 1.0
    assert np.abs(images[1] - plain.numpy()).max() > 1e-3


def test_each_host_reads_its_own_shards_with_per_replica_batches(tmp_path):
    write_shards(tmp_path, num_shards=4, per_shard=3)
    seen = []
    for host in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host,
                                             num_replicas_in_sync=2)
        result = batches(pipeline.make_dataset(config(tmp_path, training=False, batch_size=4),
                                               input_context=context))
        assert all(x.shape[0] <= 2 for x, _ in result)
        seen.append(sorted(np.concatenate([y for _, y in result]).tolist()))
    assert sorted(seen[0] + seen[1]) == sorted(i % NUM_CLASSES for i in range(12))
    assert len(seen[0]) == len(seen[1]) == 6


def test_bbox_crop_variant_gives_one_example_per_box(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=5)
    for training in (False, True):
        dataset = pipeline.make_dataset(config(tmp_path, training=training, repeat=False,
                                               crop_to_boxes=True, drop_remainder=False))
        result = batches(dataset)
        labels = sorted(np.concatenate([y for _, y in result]).tolist())
        assert labels == sorted((i + 1) % NUM_CLASSES for i in range(5))
        images = np.concatenate([x for x, _ in result])
        assert images.shape == (5, 32, 32, 3) and -1 <= images.min() and images.max() <= 1


def _corrupt_shards(folder):
    paths = write_shards(folder, num_shards=3, per_shard=4)
    # A record whose image is not a JPEG, appended to shard 0.
    with tf.io.TFRecordWriter(paths[0] + "-bad") as writer:
        for record in tf.data.TFRecordDataset(paths[0]):
            writer.write(record.numpy())
        writer.write(schema.encode_example(b"not a jpeg", 1, 1, 0, "c", "bad.jpg"))
    tf.io.gfile.rename(paths[0] + "-bad", paths[0], overwrite=True)
    # Shard 1 truncated in the middle of its third record.
    with open(paths[1], "rb") as stream:
        data = stream.read()
    sizes = [len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(paths[1])]
    with open(paths[1], "wb") as stream:
        stream.write(data[:sizes[0] + sizes[1] + 20])
    return paths


def test_bad_records_and_shards_are_skipped_and_counted(tmp_path):
    _corrupt_shards(tmp_path)
    skipped = pipeline.new_skip_counter()
    dataset = pipeline.make_dataset(config(tmp_path, training=False), skipped=skipped)
    labels = np.concatenate([y for _, y in batches(dataset)])
    assert len(labels) == 4 + 2 + 4  # shard 0 minus its bad record, 2 of shard 1, shard 2
    assert int(skipped.numpy()) == 2
    logs = {}
    pipeline.SkippedRecordsLogger(skipped).on_epoch_end(0, logs)
    assert logs["skipped_records"] == 2


@pytest.mark.parametrize("shard", [0, 1])
def test_strict_mode_stops_naming_the_shard(tmp_path, shard):
    paths = _corrupt_shards(tmp_path)
    pattern = paths[shard]  # only the one bad shard
    dataset = pipeline.make_dataset(config(tmp_path, training=False, strict=True,
                                           file_pattern=pattern))
    with pytest.raises(tf.errors.InvalidArgumentError, match=schema.shard_name("train", shard, 3)):
        batches(dataset)


def test_missing_files_name_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-\\*"):
        pipeline.make_dataset(config(tmp_path, file_pattern=str(tmp_path / "nothing-*")))


def test_training_without_augmentation_resizes_like_evaluation(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=4)
    by_label = {}
    for images, labels in batches(pipeline.make_dataset(config(tmp_path, augment=False)), 4):
        for image, label in zip(images, labels):      # a repeated record comes out the same
            np.testing.assert_array_equal(by_label.setdefault(int(label), image), image)
    evaluated = batches(pipeline.make_dataset(config(tmp_path, training=False)), 1)[0]
    assert sorted(by_label) == sorted(evaluated[1].tolist())
    for image, label in zip(*evaluated):
        np.testing.assert_allclose(by_label[int(label)], image, atol=1e-6)


def test_evaluation_can_yield_each_record_object_box(tmp_path):
    write_shards(tmp_path, num_shards=2, per_shard=3)
    with_boxes = pipeline.make_dataset(config(tmp_path, training=False, with_object_box=True))
    plain = batches(pipeline.make_dataset(config(tmp_path, training=False)))
    for (images, labels, boxes), (plain_images, plain_labels) in zip(with_boxes, plain):
        np.testing.assert_array_equal(images.numpy(), plain_images)
        np.testing.assert_array_equal(labels.numpy(), plain_labels)
        np.testing.assert_allclose(boxes.numpy(), [[0.25, 0.25, 0.75, 0.5]] * len(labels))
    # Several boxes: the record's one box, then the padding no glimpse holds.
    padded = pipeline.make_dataset(config(tmp_path, training=False, with_object_box=True,
                                          object_boxes=3))
    for _, labels, boxes in padded:
        np.testing.assert_allclose(boxes.numpy(), [[[0.25, 0.25, 0.75, 0.5],
                                                    list(pipeline.NO_BOX),
                                                    list(pipeline.NO_BOX)]] * len(labels))
    with pytest.raises(ValueError, match="with_object_box needs the whole-image"):
        config(tmp_path, training=True, with_object_box=True)
    with pytest.raises(ValueError, match="with_object_box needs the whole-image"):
        config(tmp_path, training=False, eval_central_fraction=0.875, with_object_box=True)


@pytest.mark.parametrize("cache", pipeline.CACHES)
def test_cached_examples_are_the_same_examples(tmp_path, cache):
    write_shards(tmp_path, num_shards=2, per_shard=3)
    plain = batches(pipeline.make_dataset(config(tmp_path, training=False)))
    cached = batches(pipeline.make_dataset(config(tmp_path, training=False, cache=cache)))
    for (images, labels), (cached_images, cached_labels) in zip(plain, cached):
        np.testing.assert_array_equal(images, cached_images)
        np.testing.assert_array_equal(labels, cached_labels)
    # Training: every record once per epoch (6 records, batches of 3), shuffled, repeated.
    epochs = batches(pipeline.make_dataset(config(tmp_path, cache=cache, augment=False,
                                                  batch_size=3)), 6)
    expected = sorted(np.concatenate([y for _, y in plain]).tolist())
    for first in (0, 2, 4):
        labels = np.concatenate([epochs[first][1], epochs[first + 1][1]])
        assert sorted(labels.tolist()) == expected
    augmented = batches(pipeline.make_dataset(config(tmp_path, cache=cache)), 2)
    assert augmented[0][0].shape == (4, 32, 32, 3) and np.abs(augmented[0][0]).max() <= 1.0
    with pytest.raises(ValueError, match="cache does not support crop_to_boxes"):
        config(tmp_path, cache=cache, crop_to_boxes=True)


def test_both_caches_train_on_identical_batches(tmp_path):
    # The digits demo caches the JPEG records instead of the pixels (a fifth
    # of the memory): it must see the same batches in the same order, with and
    # without augmentation, laid out in epochs as the training stages read them.
    write_shards(tmp_path, num_shards=2, per_shard=5)
    for augment in (False, True):
        streams = [batches(pipeline.make_dataset(
            config(tmp_path, cache=cache, augment=augment, batch_size=3),
            epochs=pipeline.Epochs(3, 3))) for cache in pipeline.CACHES]
        assert len(streams[0]) == len(streams[1]) == 9
        for (images, labels), (other_images, other_labels) in zip(*streams):
            np.testing.assert_array_equal(images, other_images)
            np.testing.assert_array_equal(labels, other_labels)
    with pytest.raises(ValueError, match="cache must be None or one of records, decoded"):
        config(tmp_path, cache=True)
