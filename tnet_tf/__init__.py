"""tnet_tf: TNet, the multi-scale hard-attention classifier, in TensorFlow 2 / Keras.

    import tnet_tf
    model = tnet_tf.TNet(tnet_tf.get_preset("fmow"))
    outputs = model(images, locations=[2])      # images: [B, 448, 448, 3] in [-1, 1]
    outputs["logits"], outputs["boxes"], outputs["location_probs"]

    mgnet = tnet_tf.MGNet(tnet_tf.MGNetConfig(num_classes=100))  # MGNet, ResNet-50
    outputs = mgnet(images, glimpses=4)          # images: [B, 224, 224, 3]; any t <= T exits
"""
from tnet_tf.config import PRESETS, BackboneConfig, TNetConfig, get_preset
from tnet_tf.budget import reachable_levels
from tnet_tf.tnet import select_cells
from tnet_tf.training import TNet, Classifier
from tnet_tf.mgnet import MGNet, MGNetConfig

__all__ = ["PRESETS", "BackboneConfig", "TNetConfig", "get_preset", "TNet", "Classifier",
           "MGNet", "MGNetConfig",
           "reachable_levels", "select_cells"]
