"""TNet on a user's own images: decoding image files of any size and format,
the evaluation resize, and a SavedModel that serves logits together with the
attended boxes.

`predictions(outputs)` turns a TNet output dict into what a user reads
(probabilities, the top classes, and per level the attended boxes with the
probability of their cell); `experiments.predict` and the exported
signatures both use it. `export(...)` writes a SavedModel that loads with
`tf.saved_model.load` alone, without tnet_tf:

    served = tf.saved_model.load(path)
    out = served.signatures["serving_default"](images=jpeg_bytes, locations=tf.constant([2, 1]))
    out["logits"], out["top_class_names"], out["boxes_level_2"], out["location_probs_level_2"]

Signatures (all inputs required, as serving stacks read them):
  serving_default(images: tf.string [B] encoded JPEG/PNG/GIF/BMP,
                  locations: int32 [L]) -> predictions + "image_sizes" [B, 2]
  serving_images(images: float32 [B, S, S, 3] in [-1, 1] at the input size,
                 locations: int32 [L]) -> predictions
`locations` is one of the exported budgets (e.g. [2, 1]); an empty tensor
([]) asks for the model's default budget. The loaded object's functions
`classify(images[, locations])` (encoded bytes) and `classify_images(images[,
locations])` return the same with `locations` optional. A batch runs one budget, so
unlike `experiments.predict` the signatures do not cut it for small files. Predictions: "logits",
"probabilities" [B, C], "top_classes" / "top_probabilities" /
"top_class_names" [B, k], and for every level l up to the deepest exported
budget "boxes_level_l" [B, P, 4] (y1, x1, y2, x2 as fractions of the image)
and "location_probs_level_l" [B, P] (level 1: the whole image, probability
1; a level the budget does not reach has P = 0).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from tnet_tf import budget as budget_lib
from tnet_tf.data import augment

TOP_K = 5


def decode_image(data) -> tf.Tensor:
    """Encoded JPEG, PNG, GIF (first frame) or BMP bytes -> uint8 [H, W, 3] RGB
    (grayscale, RGBA and CMYK converted); a corrupt file raises an OpError."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def preprocess(image, input_size: int) -> tf.Tensor:
    """The evaluation resize of every dataset (the whole image to input_size
    x input_size, bilinear), to [-1, 1]: boxes as fractions of the model's
    input are fractions of the original image too."""
    return augment.eval_image(image, input_size)


def predictions(outputs: Dict, levels: int, top_k: int = TOP_K) -> Dict[str, tf.Tensor]:
    """What a user reads from a TNet output dict, with one entry per level
    up to `levels` (see the module docstring)."""
    logits = tf.cast(outputs["logits"], tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    top = tf.math.top_k(probabilities, k=min(top_k, int(logits.shape[-1])))
    result = {"logits": logits, "probabilities": probabilities,
              "top_classes": top.indices, "top_probabilities": top.values}
    batch = tf.shape(logits)[0]
    cell_probs = tf.exp(tf.cast(outputs["location_log_probs"], tf.float32))
    start = 0
    for level in range(1, levels + 1):
        if level <= len(outputs["boxes"]):
            boxes = tf.cast(outputs["boxes"][level - 1], tf.float32)
        else:
            boxes = tf.zeros([batch, 0, 4])
        count = boxes.shape[1]
        if level == 1:
            probs = tf.ones([batch, count])
        else:
            probs = cell_probs[:, start:start + count]
            start += count
        result[f"boxes_level_{level}"] = boxes
        result[f"location_probs_level_{level}"] = probs
    return result


def budget_key(locations) -> tf.Tensor:
    """"2,1" for locations [2, 1] ("" for none), a budget as a string tensor."""
    return tf.strings.reduce_join(tf.strings.as_string(tf.cast(locations, tf.int32)),
                                  separator=",")


class _Plan:
    """What the served functions close over (a plain object: tf.Module tracks
    lists and tensors in its attributes, and the SavedModel needs none of these)."""

    def __init__(self, model, budgets, default, class_names, input_size):
        self.budgets = [tuple(int(k) for k in b) for b in budgets]
        default = tuple(int(k) for k in default)
        if default not in self.budgets:
            self.budgets.append(default)
        for locations in self.budgets:
            model.resolve_locations(locations)
            budget_lib.check_reachable(locations, input_size, model.config.base_resolution,
                                       model.config.cell_fraction)
        self.levels = max(budget_lib.levels_needed(b) for b in self.budgets)
        self.keys = [",".join(map(str, b)) for b in self.budgets]
        self.default_index = self.budgets.index(default)
        self.class_names = list(class_names)
        self.input_size = int(input_size)
        self.model = model


class ServedTNet(tf.Module):
    """The module `export` saves: the signatures over a fixed set of budgets.

    A TNet's graph depends on its budget, so each exported budget is traced
    once and the `locations` input picks one with `tf.switch_case`. Only the
    weights are tracked: the Keras model is called from a closure, so the
    SavedModel holds plain functions and loads without tnet_tf.
    """

    def __init__(self, model, budgets: Sequence[Sequence[int]], default: Sequence[int],
                 class_names: Sequence[str], input_size: int):
        super().__init__(name="served_tnet")
        self.weights = list(model.variables)
        self._plan = _Plan(model, budgets, default, class_names, input_size)
        size = self._plan.input_size
        pixels = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
        encoded = tf.TensorSpec([None], tf.string, name="images")
        locations = tf.TensorSpec([None], tf.int32, name="locations")
        self.serving_images = tf.function(self._classify_images,
                                          input_signature=[pixels, locations])
        self.serving_default = tf.function(self._classify_bytes,
                                           input_signature=[encoded, locations])
        # Signature inputs are all required; these take `locations` or not.
        self.classify = _with_optional_budget(self._classify_bytes, encoded, locations)
        self.classify_images = _with_optional_budget(self._classify_images, pixels, locations)

    def _budget_index(self, locations):
        plan = self._plan
        key = budget_key(locations)
        matches = tf.equal(tf.constant(plan.keys), key)
        found = tf.reduce_any(matches)
        supported = "; ".join(f"[{k}]" for k in plan.keys)
        check = tf.debugging.Assert(tf.logical_or(found, tf.equal(key, "")),
                                    [f"locations must be one of the exported budgets "
                                     f"{supported} or empty for the default; got", key])
        with tf.control_dependencies([check]):
            return tf.where(found, tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32),
                            plan.default_index)

    def _classify_images(self, images, locations):
        plan = self._plan

        def branch(budget):
            def run():
                outputs = plan.model(images, locations=list(budget), training=False)
                result = predictions(outputs, plan.levels)
                result["top_class_names"] = tf.gather(tf.constant(plan.class_names),
                                                      result["top_classes"])
                return result
            return run
        return tf.switch_case(self._budget_index(locations),
                              [branch(b) for b in plan.budgets])

    def _classify_bytes(self, images, locations):
        size = self._plan.input_size

        def decode(data):
            image = decode_image(data)
            return preprocess(image, size), tf.shape(image)[:2]
        pixels, sizes = tf.map_fn(decode, images, fn_output_signature=(
            tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([2], tf.int32)))
        result = self._classify_images(pixels, locations)
        result["image_sizes"] = sizes
        return result


def _with_optional_budget(function, images, locations) -> tf.types.experimental.Function:
    """`function(images, locations)` as a tf.function traced with and without
    `locations` (then the default budget), so that both calls survive saving."""
    wrapped = tf.function(lambda images, locations=None: function(
        images, tf.zeros([0], tf.int32) if locations is None else locations))
    wrapped.get_concrete_function(images)
    wrapped.get_concrete_function(images, locations)
    return wrapped


def export(model, path: str, budgets: Sequence[Sequence[int]], default: Sequence[int],
           class_names: Sequence[str], input_size: int) -> List[str]:
    """Writes a SavedModel of `model` (a built tnet_tf.TNet) serving `budgets`
    at `input_size` px; returns the signature names."""
    if len(class_names) != model.config.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of "
                         f"{model.config.num_classes} classes")
    served = ServedTNet(model, budgets, default, class_names, input_size)
    signatures = {"serving_default": served.serving_default.get_concrete_function(),
                  "serving_images": served.serving_images.get_concrete_function()}
    tf.saved_model.save(served, path, signatures=signatures)
    return sorted(signatures)
