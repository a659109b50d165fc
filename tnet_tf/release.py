"""The authors' published weights: read (and write) checkpoints in the
format of their release.

    model = release.load_model("weights/fmow_tnet", "fmow")           # a tnet_tf.TNet
    outputs = model(images, locations=[2, 1], training=False)
    baseline = release.load_model("weights/fmow_b0/ckpt-100", "fmow", model="baseline")
    release.save_checkpoint(model, "exported/ckpt-1")                  # read by their code

The release's `train.py` saves `tf.train.Checkpoint(**{name: variable})`:
one entry per model variable, keyed by the variable's name with the model
scope removed (`tf.train.Checkpoint` escapes "/" as ".S"), plus `iter`,
`baseline_var`, `save_counter` and the optimizer's slots. `release_names`
maps each of our variables to its key; `load_model` matches every one and
fails naming the key that is missing, left over or of another shape.

Where the release differs from the paper's wording, `load_model` sets the
config fields that reproduce it (`release_fields`, `release_config`): the
positional code variant "release", the feature-map pixels (and, for the
CUB / NABirds TNet-B0..B4, the layer and width) of the location module and
the integer grid (cells cut on whole pixels, the overhang zero-padded).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tnet_tf import config as config_lib
from tnet_tf.training import Classifier, TNet

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
IGNORED = ("iter", "baseline_var", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
# The feature-map rows / columns the release's location module reads: on
# BagNet-77's 9 x 9 map at 77 px, and (fMoW, 3 x 3 grid) on EfficientNet-B0's
# 14 x 14 block-4c map at 224 px (ours by receptive field: 3, 6, 10).
RELEASE_GRID_INDICES = {"bagnet77": (0, 2, 4, 6, 8), "efficientnet": (2, 6, 10)}
# CUB / NABirds (5 x 5 grid), as the release's models_cub.py / models_nab.py: the
# layer whose map the location module reads, its pixels and its channels (the
# module's width; its squeeze-excitation half of it). B0 reads block 4a's 14 x 14
# map, B1-B4 block 3b's 28 x 28 map.
RELEASE_FINE_GRAINED_LOCATION = {
    "efficientnet-b0": ("block4a_project_bn", (2, 4, 6, 8, 10), 80),
    **{f"efficientnet-b{i}": ("block3b_add", (5, 9, 13, 17, 21), width)
       for i, width in ((1, 40), (2, 48), (3, 48), (4, 56))}}
# The release's positional code is a quarter of the feature width (pos_dim_divisor 4).
FEATURE_WIDTH = {"efficientnet-b0": 1280, "efficientnet-b1": 1280, "efficientnet-b2": 1408,
                 "efficientnet-b3": 1536, "efficientnet-b4": 1792}
# BagNet-77's ConvBlocks grouped as the release's parts 2-5 (our block1..block16).
BAGNET_PARTS = (3, 4, 6, 3)
# The location modules' hidden kernels, whose coordinate channels are swapped.
COORDINATE_KERNEL = {"squeeze_excitation": "location_prediction/final/conv2d/kernel",
                     "context": "location_prediction_earlyLocs/conv2d/kernel"}
_EFFICIENTNET_LAYERS = {"expand_conv": "expand/conv2d", "expand_bn": "expand/batch_norm",
                        "dwconv": "depthwise/conv2d", "bn": "depthwise/batch_norm",
                        "se_reduce": "se/conv2d_1", "se_expand": "se/conv2d_2",
                        "project_conv": "bottleneck/conv2d", "project_bn": "bottleneck/batch_norm"}


def swap_coordinates(kernel: np.ndarray) -> np.ndarray:
    """The location module's hidden 1x1 kernel with its last two input
    channels exchanged: the release appends the cell coordinates as (y, x),
    we as (x, y) (found against the release's level-1 location probabilities).
    Its own inverse."""
    kernel = np.array(kernel)
    kernel[:, :, [-2, -1], :] = kernel[:, :, [-1, -2], :]
    return kernel


def release_fields(config: config_lib.TNetConfig) -> dict:
    """The config fields that make a TNet of `config`'s backbone and grid
    compute what the release computes ("backbone": BackboneConfig fields)."""
    fields = {"code_variant": "release", "integer_grid": True}
    name = config.backbone.name
    if name == "bagnet77" or config.grid_size == 3:
        family = "bagnet77" if name == "bagnet77" else "efficientnet"
        return {**fields, "grid_indices": RELEASE_GRID_INDICES[family]}
    if name not in RELEASE_FINE_GRAINED_LOCATION:
        raise ValueError(f"the release has no {config.grid_size} x {config.grid_size} TNet "
                         f"with a {name} backbone")
    layer, indices, width = RELEASE_FINE_GRAINED_LOCATION[name]
    return {**fields, "grid_indices": indices, "location_width": width,
            "location_se_width": width // 2, "code_size": FEATURE_WIDTH[name] // 4,
            "backbone": {"location_layer": layer}}


def release_config(config: config_lib.TNetConfig) -> config_lib.TNetConfig:
    """`config` with the release's fields (`release_fields`)."""
    fields = release_fields(config)
    backbone = dataclasses.replace(config.backbone, **fields.pop("backbone", {}))
    return dataclasses.replace(config, backbone=backbone, **fields)


# ----------------------------------------------------------------------------
# Names


def _backbone_layer(name: str) -> Optional[str]:
    """The release path of one of our backbone layers (None: not in the release)."""
    if name in ("stem_conv", "stem_bn", "top_conv", "top_bn"):       # EfficientNet
        part, kind = name.split("_")
        return f"{part}/{'conv2d' if kind == 'conv' else 'batch_norm'}"
    match = re.fullmatch(r"block(\d)([a-z])_(\w+)", name)
    if match and match.group(3) in _EFFICIENTNET_LAYERS:
        stage, letter, kind = int(match.group(1)), match.group(2), match.group(3)
        return (f"part{stage + 1}_block{ord(letter) - ord('a') + 1}/"
                f"{_EFFICIENTNET_LAYERS[kind]}")
    match = re.fullmatch(r"block(\d+)_(conv[123]|shortcut)", name)                 # BagNet-77
    if match:
        index, kind = int(match.group(1)), match.group(2)
        part, block = 2, index
        for size in BAGNET_PARTS:
            if block <= size:
                break
            part, block = part + 1, block - size
        kind = "shortcut_comp" if kind == "shortcut" else f"comp_{kind[-1]}"
        return f"part{part}_block{block}/{kind}/conv2d"
    return None


def release_names(model) -> Dict[str, tf.Variable]:
    """{release key (unescaped, e.g. 'feature_extraction/stem/conv2d/kernel'):
    our variable} for a built `TNet` or `Classifier` with a BagNet-77 or
    EfficientNet backbone. Our input normalisation has no counterpart (the
    release feeds [-1, 1] images to the stem) and is left out."""
    bagnet = model.config.backbone.name == "bagnet77"
    names = {}

    def add(path: str, layer):
        for weight in layer.weights:
            attribute = weight.name.split("/")[-1].split(":")[0]
            names[f"{path}/{attribute}"] = weight

    for layer in model.backbone.layers:
        name = layer.name
        if bagnet and name in ("stem_conv", "top_conv"):
            path = "part1/conv2d" if name == "stem_conv" else "part6/conv2d"
        else:
            path = _backbone_layer(name)
        if path is not None and layer.weights:
            add(f"feature_extraction/{path}", layer)
    add("feature_extraction/logits_layer/linear", model.classifier.dense)
    if isinstance(model, TNet):
        add("feature_posBurn/linear", model.positional_encoding.dense)
        if model.feature_weighting is not None:                    # CUB / NABirds
            add("feat_weighting/se/dense_1", model.feature_weighting.se_reduce)
            add("feat_weighting/se/dense_2", model.feature_weighting.se_expand)
            add("feat_weighting/output_linear", model.feature_weighting.score)
        module = model.location_module
        if module.variant == "squeeze_excitation":
            prefix = "location_prediction"
            add(f"{prefix}/init/conv2d", module.input_conv)
            add(f"{prefix}/se/conv2d_1", module.se_reduce)
            add(f"{prefix}/se/conv2d_2", module.se_expand)
            add(f"{prefix}/final/conv2d", module.hidden_conv)
        else:
            prefix = "location_prediction_earlyLocs"
            add(f"{prefix}/conv2d", module.hidden_conv)
        add(f"{prefix}/width_scaling", module.x_map)
        add(f"{prefix}/height_scaling", module.y_map)
        add(f"{prefix}/output_linear", module.logit_conv)
    return names


def escape(name: str) -> str:
    """A release key as `tf.train.Checkpoint` stores it."""
    return name.replace(".", "..").replace("/", ".S") + SUFFIX


# ----------------------------------------------------------------------------
# Reading


def checkpoint_prefix(checkpoint: str) -> str:
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint)."""
    if tf.io.gfile.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise FileNotFoundError(f"{checkpoint} holds no checkpoint (no 'checkpoint' file)")
        return latest
    if not tf.io.gfile.exists(checkpoint + ".index"):
        raise FileNotFoundError(f"release checkpoint not found: {checkpoint} (no "
                                f"{os.path.basename(checkpoint)}.index)")
    return checkpoint


def _model_keys(keys):
    return {key for key in keys if not key.startswith(("optimizer", *IGNORED))}


def load_model(checkpoint: str, preset: str, model: str = "tnet",
               input_size: Optional[int] = None, **overrides):
    """A `tnet_tf.TNet` ("tnet") or `tnet_tf.Classifier` ("baseline") of the
    named preset with the weights of a release checkpoint (prefix or
    directory) and the release's geometry; `overrides` are TNetConfig
    fields. The checkpoint's `iter` and `baseline_var` land in
    `model.release_metadata`."""
    if model not in ("tnet", "baseline"):
        raise ValueError(f"model must be 'tnet' or 'baseline'; got {model!r}")
    prefix = checkpoint_prefix(checkpoint)
    config = config_lib.get_preset(preset, **overrides)
    size = int(input_size or (config.input_size if model == "tnet" else config.base_resolution))
    fields = release_fields(config) if model == "tnet" else {}
    backbone = {**fields.pop("backbone", {}), **_as_dict(overrides.get("backbone", {}))}
    config = config_lib.get_preset(preset, **{**fields, "input_size": size, **overrides,
                                              "backbone": backbone})
    if model == "tnet":
        built = TNet(config)
        built(tf.zeros([1, size, size, 3]), locations=[1], training=False)
    else:
        built = Classifier(config, input_size=size)
        built(tf.zeros([1, size, size, 3]), training=False)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    names = release_names(built)
    wanted = {escape(name): (name, variable) for name, variable in names.items()}
    missing = sorted(set(wanted) - set(shapes))
    if missing:
        raise ValueError(f"{prefix}: no value for {wanted[missing[0]][0]} (key {missing[0]}"
                         f"{f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''})"
                         f"; is it a {preset} {model} checkpoint?")
    left_over = sorted(_model_keys(shapes) - set(wanted))
    if left_over:
        name = left_over[0][:-len(SUFFIX)].replace(".S", "/").replace("..", ".")
        raise ValueError(f"{prefix}: {name} (key {left_over[0]}) matches no variable of the "
                         f"{preset} "
                         f"{model}{f' ({len(left_over) - 1} more)' if len(left_over) > 1 else ''}")
    for key, (name, variable) in wanted.items():
        if list(shapes[key]) != variable.shape.as_list():
            raise ValueError(f"{prefix}: {name} has shape {shapes[key]} in the checkpoint, "
                             f"{variable.shape.as_list()} in the model")
        value = reader.get_tensor(key)
        variable.assign(swap_coordinates(value) if name in COORDINATE_KERNEL.values() else value)
    release_input(built.backbone)
    built.release_metadata = {name: reader.get_tensor(name + SUFFIX).item()
                              for name in ("iter", "baseline_var") if name + SUFFIX in shapes}
    return built


def _as_dict(backbone) -> dict:
    """A backbone override (a name, a dict or a BackboneConfig) as a dict of fields."""
    if isinstance(backbone, str):
        return {"name": backbone}
    return dataclasses.asdict(backbone) if dataclasses.is_dataclass(backbone) else dict(backbone)


def _input_normalization(backbone):
    return next((layer for layer in backbone.layers
                 if isinstance(layer, tf.keras.layers.Normalization)), None)


def release_input(backbone) -> None:
    """The release feeds [-1, 1] images straight to the stem: our input
    normalisation ([-1, 1] -> [0, 1] -> (x - mean) / std) becomes the identity
    (EfficientNet; BagNet-77 has none)."""
    layer = _input_normalization(backbone)
    if layer is not None:
        mean, variance, count = layer.get_weights()
        layer.set_weights([np.full_like(mean, 0.5), np.full_like(variance, 0.25), count])
        layer.finalize_state()


# ----------------------------------------------------------------------------
# Writing


def save_checkpoint(model, path: str, step: int = 0) -> str:
    """Writes `model`'s variables as the release's `train.py` saves them
    (`iter` = `step`, `baseline_var` = the model's baseline or 0.5); returns
    the prefix written (`path`). The release's stem reads [-1, 1] images, so
    an input normalisation other than the identity (e.g. the ImageNet mean
    and deviation of Keras' pretrained weights) cannot be written: the
    error says so rather than writing weights the release would misread."""
    layer = _input_normalization(model.backbone)
    if layer is not None:
        mean, variance, _ = layer.get_weights()
        if not (np.allclose(mean, 0.5) and np.allclose(variance, 0.25)):
            raise ValueError(
                f"{model.name}: its backbone normalises the input with mean {mean.ravel()} and "
                f"variance {variance.ravel()} of [0, 1] images; the release feeds [-1, 1] "
                f"images to the stem unnormalised, so these weights cannot be written in its "
                f"format (train with release.release_input(model.backbone) applied)")
    variables = {name: (tf.Variable(swap_coordinates(variable.numpy()), name="swapped")
                        if name in COORDINATE_KERNEL.values() else variable)
                 for name, variable in release_names(model).items()}
    baseline = getattr(model, "baseline", None)
    variables["iter"] = tf.Variable(step, dtype=tf.int64)
    variables["baseline_var"] = tf.Variable(
        float(baseline.numpy()) if baseline is not None else 0.5, dtype=tf.float32)
    checkpoint = tf.train.Checkpoint(**variables)
    return checkpoint.write(path)
