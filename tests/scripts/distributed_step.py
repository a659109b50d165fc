"""One training step under MirroredStrategy (2 logical CPUs) vs one device.

    python tests/scripts/distributed_step.py

Both runs start from the same weights and see the same global batch of 4
images (2 per replica); the compact backbone normalises each image on its
own (no batch statistics), so replicas need no synchronisation. SGD (whose
update is proportional to the gradient, unlike Adam's first step) makes
any error in the loss scaling visible. Prints one JSON line with the
largest differences.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tnet_tf  # noqa: E402


CONFIG = tnet_tf.get_preset("tiny")


def build(strategy, weights=None):
    with strategy.scope():
        model = tnet_tf.TNet(CONFIG)
        model(tf.zeros([1, 64, 64, 3]))
        model.compile(tf.keras.optimizers.SGD(0.5), lambda_f=0.5, lambda_c=0.3, lambda_r=0.3,
                      monte_carlo_samples=2, weight_decay=1e-3, run_eagerly=True)
        if weights is not None:
            model.set_weights(weights)
    return model


def reinforce_gradients(strategy, model, images, labels):
    """The largest |gradient| of the REINFORCE terms alone (training mode) on the
    backbone and on the location module, over the replicas."""
    def step(images, labels):
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            terms = tnet_tf.losses.tnet_loss(out, labels, model.baseline,
                                             model.training_options.loss_weights)
            loss = tf.nn.compute_average_loss(terms["reinforce"] + terms["feature_reinforce"])
        parts = (model.backbone.trainable_variables, model.location_module.trainable_variables)
        grads = tape.gradient(loss, parts[0] + parts[1])
        largest = [tf.reduce_max([tf.reduce_max(tf.abs(g)) if g is not None else 0.0
                                  for g in grads[:len(parts[0])]]),
                   tf.reduce_max([tf.reduce_max(tf.abs(g)) for g in grads[len(parts[0]):]])]
        return tf.stack(largest)

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
    batch = next(iter(dataset))
    per_replica = strategy.experimental_local_results(strategy.run(step, args=batch))
    backbone, location = np.max([value.numpy() for value in per_replica], axis=0)
    return {"backbone": float(backbone), "location_module": float(location),
            "replicas": len(per_replica)}


def main():
    tf.keras.utils.set_random_seed(0)
    images = tf.random.stateless_uniform([8, 64, 64, 3], seed=[1, 2], minval=-1, maxval=1)
    labels = tf.constant([0, 1, 2, 3, 4, 0, 1, 2])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    distributed = build(mirrored)
    initial = distributed.get_weights()
    single = build(tf.distribute.get_strategy(), initial)
    logs = {}
    for name, model in (("distributed", distributed), ("single", single)):
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        logs[name] = {key: values[-1] for key, values in history.history.items()}
    after_d, after_s = distributed.get_weights(), single.get_weights()
    names = [w.name for w in single.weights]
    weight_diff = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, after_d, after_s)}
    moved = max(float(np.abs(a - b).max()) for a, b in zip(after_s, initial))
    print(json.dumps({
        "max_weight_difference": max(weight_diff.values()),
        "worst_weight": max(weight_diff, key=weight_diff.get),
        "largest_update": moved,
        "baseline": [float(distributed.baseline.numpy()), float(single.baseline.numpy())],
        "logs": logs,
        "replicas": mirrored.num_replicas_in_sync,
        "reinforce_gradients": reinforce_gradients(mirrored, distributed, images[:4],
                                                   labels[:4]),
    }), flush=True)


if __name__ == "__main__":
    main()
