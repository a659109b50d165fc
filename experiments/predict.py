"""Classify your own images with a trained TNet and see where it looked.

    python -m experiments.predict --model_dir=runs/digits/finetune_256 \
        --images=runs/digits/samples --output_dir=runs/predict --figures
    python -m experiments.predict --model_dir=runs/fmow/finetune_896 \
        --images='photos/*.jpg' --locations=2,1 --output_dir=runs/predict

--model_dir is one trained stage (the folder holding its run.json and
final/); instead, --release_checkpoint=weights/fmow_tnet --dataset=fmow
classifies with the authors' published TNet (CUB / NABirds: --backbone=b0..b4).
--images is a file, a folder (its JPEG, PNG, GIF and BMP files, in
sub-folders too) or a glob. Files of any size and aspect ratio, grayscale,
RGBA and CMYK included, are resized as the stage's evaluation resizes them
(the whole image to --input_size, default the stage's). The budget
(--locations, default the stage's) is cut to the levels an image reaches:
a level adds resolution only while the previous level's cells span more
pixels of the file, and of the model input, than the base resolution.

Writes <output_dir>/predictions.jsonl, one line per file:
  {"file", "width", "height", "locations" (the budget used),
   "requested_locations", "note" (why the budget was cut, if it was),
   "top": [{"class", "name", "probability"}, ... --top_k of them, default 5],
   "levels": [{"level": 1, "boxes": [[left, top, right, bottom]] in pixels of
               the file, "probabilities": [1.0]}, {"level": 2, ...}, ...]}
or {"file", "error"} for a file that cannot be read (reported on stderr and
skipped; the exit code is 1 only with --strict). With --figures, also
<output_dir>/figures/<n>_<name>.png: the image with its attended boxes.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from experiments.run_config import RELEASE_DATASETS, FlagError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
FIGURE_MAX_SIDE = 640     # px; figures of larger files are drawn downscaled
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "A trained TNet stage: RUN/STAGE (holds run.json).")
    define_release_flags()
    flags.DEFINE_string("images", None, "An image file, a folder of images or a glob.")
    flags.DEFINE_string("locations", None, "Budget, e.g. '2' or '2,1'; default: the stage's.")
    flags.DEFINE_integer("input_size", None, "Model input size in px; default: the stage's.")
    flags.DEFINE_string("output_dir", None, "Where predictions.jsonl (and figures/) go.")
    flags.DEFINE_integer("top_k", 5, "Classes listed per file (all of them: the number of "
                         "classes).")
    flags.DEFINE_bool("figures", False, "Also draw the attended boxes on each image.")
    flags.DEFINE_bool("strict", False, "Exit with 1 when a file could not be read.")


def define_release_flags() -> None:
    """The flags that serve the authors' published TNet instead of a trained stage."""
    flags.DEFINE_string("release_checkpoint", None, "Instead of --model_dir: the authors' "
                        "published TNet of --dataset (a checkpoint prefix or its folder).")
    flags.DEFINE_enum("dataset", None, list(RELEASE_DATASETS),
                      "The dataset of --release_checkpoint (its recipe builds the model).")
    flags.DEFINE_string("backbone", None, "CUB / NABirds --release_checkpoint: b0..b4.")


def release_options() -> dict:
    """The release flags' values, as `stages.restore_tnet` takes them."""
    return {"release_checkpoint": FLAGS.release_checkpoint, "dataset": FLAGS.dataset,
            "backbone": FLAGS.backbone}


def list_images(spec: str) -> List[str]:
    """The files `spec` names: a file, a folder's image files (recursively,
    by extension) or a glob's matches, sorted."""
    if os.path.isdir(spec):
        return sorted(os.path.join(root, name) for root, _, names in os.walk(spec)
                      for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if os.path.isfile(spec):
        return [spec]
    matches = sorted(path for path in glob.glob(spec, recursive=True) if os.path.isfile(path))
    if not matches:
        raise FlagError("images", f"no such file or folder, and no file matches: {spec}")
    return matches


def to_pixels(boxes, width: int, height: int) -> List[List[float]]:
    """Boxes [P, 4] (y1, x1, y2, x2 as fractions) -> [left, top, right, bottom] px."""
    return [[float(x1) * width, float(y1) * height, float(x2) * width, float(y2) * height]
            for y1, x1, y2, x2 in boxes]


class Predictor:
    """A trained stage (or, with `release`, the authors' published TNet:
    `stages.restore_tnet`'s release_checkpoint, dataset and backbone), ready
    to classify files one by one."""

    def __init__(self, model_dir: Optional[str], locations: Optional[Sequence[int]] = None,
                 input_size: Optional[int] = None, top_k: int = 5, **release):
        from experiments import stages
        from tnet_tf import budget
        self.model, recipe, self.config, self.class_names = stages.restore_tnet(model_dir,
                                                                                **release)
        self.input_size = int(input_size or recipe.input_size)
        if self.input_size < self.config.base_resolution:
            raise FlagError("input_size", f"{self.input_size} px is below the model's "
                            f"{self.config.base_resolution} px base resolution")
        try:
            self.locations = budget.check(
                locations if locations is not None else recipe.locations, self.config.grid_size)
        except ValueError as error:
            raise FlagError("locations", str(error)) from None
        if top_k < 1:
            raise FlagError("top_k", f"{top_k} must be >= 1")
        self.top_k = min(top_k, self.config.num_classes)
        self._functions = {}

    def fit_budget(self, width: int, height: int) -> Tuple[Tuple[int, ...], Optional[str]]:
        """The budget for a file of width x height px, and why it was cut."""
        from tnet_tf import budget
        config = self.config
        reach = budget.reachable_levels(min(width, height, self.input_size),
                                        config.base_resolution, config.cell_fraction)
        fitted = budget.fit(self.locations, reach)
        if fitted == self.locations:
            return fitted, None
        limit = "the file" if min(width, height) < self.input_size else "the model input"
        return fitted, (f"{width}x{height} px at input size {self.input_size} reaches "
                        f"{reach} level(s) ({limit} limits it; base resolution "
                        f"{config.base_resolution} px): locations {list(self.locations)} cut to "
                        f"{list(fitted)}")

    def __call__(self, data: bytes) -> Tuple[dict, Dict, object]:
        """(the JSON record, TNet's outputs, the decoded image) of one encoded file."""
        import tensorflow as tf
        from tnet_tf import budget, serving
        image = serving.decode_image(data)
        height, width = (int(d) for d in image.shape[:2])
        locations, note = self.fit_budget(width, height)
        pixels = serving.preprocess(image, self.input_size)[None]
        if locations not in self._functions:
            self._functions[locations] = tf.function(
                lambda x, b=locations: self.model(x, locations=list(b), training=False))
        outputs = self._functions[locations](pixels)
        levels = budget.levels_needed(locations)
        result = {key: value.numpy()[0] for key, value in
                  serving.predictions(outputs, levels, self.top_k).items()}
        record = {
            "width": width, "height": height, "locations": list(locations),
            "requested_locations": list(self.locations), "note": note,
            "top": [{"class": int(k), "name": self.class_names[int(k)], "probability": float(p)}
                    for k, p in zip(result["top_classes"], result["top_probabilities"])],
            "levels": [{"level": level,
                        "boxes": to_pixels(result[f"boxes_level_{level}"], width, height),
                        "probabilities": [float(p) for p in
                                          result[f"location_probs_level_{level}"]]}
                       for level in range(1, levels + 1)],
        }
        return record, outputs, image


def draw(image, outputs: Dict, class_names: Sequence[str], path: str) -> str:
    """The file's image (downscaled to FIGURE_MAX_SIDE) with its attended boxes."""
    import tensorflow as tf
    from tnet_tf import plots
    from tnet_tf.data import augment
    height, width = (int(d) for d in image.shape[:2])
    scale = min(1.0, FIGURE_MAX_SIDE / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    shown = augment.to_signed_range(tf.image.resize(augment.to_unit_range(image), size,
                                                    antialias=True))
    return plots.attention_figure(shown.numpy(), outputs, 0, path, class_names=class_names)


def predict_files(predictor: Predictor, files: Sequence[str], output_dir: str,
                  figures: bool = False) -> Tuple[int, List[str]]:
    """Classifies every file into output_dir/predictions.jsonl; returns
    (files classified, the lines reporting files that could not be read)."""
    import tensorflow as tf
    os.makedirs(output_dir, exist_ok=True)
    if figures:
        os.makedirs(os.path.join(output_dir, "figures"), exist_ok=True)
    bar = tf.keras.utils.Progbar(len(files), unit_name="file")
    done, failed = 0, []
    with open(os.path.join(output_dir, "predictions.jsonl"), "w") as lines:
        for index, path in enumerate(files):
            try:
                with open(path, "rb") as handle:
                    record, outputs, image = predictor(handle.read())
            except (OSError, tf.errors.OpError) as error:
                reason = _reason(error)
                lines.write(json.dumps({"file": path, "error": reason}) + "\n")
                failed.append(f"skipped {path}: {reason}")
                print(f"\n{failed[-1]}", file=sys.stderr)
            else:
                if record["note"]:
                    print(f"\n{path}: {record['note']}", file=sys.stderr)
                lines.write(json.dumps({"file": path, **record}) + "\n")
                if figures:
                    stem = os.path.splitext(os.path.basename(path))[0]
                    draw(image, outputs, predictor.class_names,
                         os.path.join(output_dir, "figures", f"{index:04d}_{stem}.png"))
                done += 1
            lines.flush()
            bar.update(index + 1)
    return done, failed


def _reason(error: Exception) -> str:
    import tensorflow as tf
    if isinstance(error, tf.errors.OpError):
        # TensorFlow's message without its {{function_node ...}} and [Op:...] parts.
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", error.message or "").strip()
        return f"cannot decode the image ({message.splitlines()[0] if message else 'decode error'})"
    return f"cannot read the file ({error.strerror or error})"


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
    try:
        for name in ("images", "output_dir"):
            if not getattr(FLAGS, name):
                raise FlagError(name, "is required")
        from tnet_tf import budget
        locations = None
        if FLAGS.locations is not None:
            try:
                locations = budget.parse(FLAGS.locations)
            except ValueError as error:
                raise FlagError("locations", str(error)) from None
        files = list_images(FLAGS.images)
        predictor = Predictor(FLAGS.model_dir, locations, FLAGS.input_size, FLAGS.top_k,
                              **release_options())
    except (FlagError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"{len(files)} file(s), locations {list(predictor.locations)} at "
          f"{predictor.input_size} px -> {FLAGS.output_dir}/predictions.jsonl")
    done, failed = predict_files(predictor, files, FLAGS.output_dir, FLAGS.figures)
    print(f"classified {done} of {len(files)} file(s)")
    for line in failed:
        print(line)
    if failed and FLAGS.strict:
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
