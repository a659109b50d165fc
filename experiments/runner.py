"""What every dataset entry point shares: flags, validation, the run directory
and the dispatch to the stages (`experiments.stages`).

An entry point (e.g. `experiments/fmow.py`) calls `define_flags` with its
stages and `run` from its `main`; everything else happens here, so the
datasets differ only in their recipes.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from experiments.recipes import BACKBONE_EPOCHS, Recipe

FLAGS = flags.FLAGS
TOOL_STAGES = ("evaluate", "profile", "visualize")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# --smoke: the compact backbone at a 32 px base resolution on generated digits.
SMOKE_BASE = 32
SMOKE_CLASSES = 10


class FlagError(ValueError):
    """A bad flag value; the message names the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One dataset's entry point: its name, stages and defaults."""

    dataset: str                    # tnet_tf data pipeline name (fmow, imagenet, cub, nabirds)
    recipes: Dict[str, Recipe]      # training stages in the order they run
    eval_split: str                 # shard prefix evaluated by default
    tnet_stages: Tuple[str, ...]    # TNet training stages, last = the one evaluated
    # Writes the dataset into a folder when --data_dir has none (datasets we can generate).
    generate_data: Optional[Callable[[str], None]] = None


def define_flags(entry: Entry, default_stage: str, extra_stages: Sequence[str] = ()) -> None:
    """Defines the flags of an entry point; `extra_stages` are stages the
    entry point runs itself (e.g. the digits demo's "all")."""
    stages = list(extra_stages) + list(entry.recipes) + list(TOOL_STAGES)
    flags.DEFINE_enum("stage", default_stage, stages, "What to run.")
    flags.DEFINE_string("data_dir", None, "Folder of the TFRecord shards (data_prep output).")
    flags.DEFINE_string("model_dir", None, "Run folder; each stage writes to its subfolder.")
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
    flags.DEFINE_integer("steps_per_epoch", None, "Default: training images / global batch.")
    flags.DEFINE_bool("mixed_precision", False, "bfloat16 on CPU/TPU, float16 on GPU.")
    flags.DEFINE_integer("seed", 0, "Seed of weights, data order and augmentation.")
    flags.DEFINE_bool("smoke", False, "Run the stage end to end on a tiny generated dataset "
                      "with a compact model, to check an installation (about a minute).")
    flags.DEFINE_string("init_checkpoint", None, "Checkpoint that initialises the stage; "
                        "default: the final checkpoint of the recipe's init_from stage.")
    flags.DEFINE_string("checkpoint_stage", entry.tnet_stages[-1],
                        "evaluate / visualize / profile: the stage whose final checkpoint "
                        "is used.")
    flags.DEFINE_string("eval_split", entry.eval_split, "Shard prefix to evaluate.")
    flags.DEFINE_multi_string("budgets", None, "evaluate: location budgets, e.g. '0;1;2,1'; "
                              "default: the recipe's.")
    flags.DEFINE_bool("profile", False, "evaluate: also measure ms/image and memory.")
    flags.DEFINE_bool("export_attention", False, "evaluate: CSV of every attended box.")
    flags.DEFINE_integer("num_images", 8, "visualize: images to draw.")
    flags.DEFINE_integer("eval_steps", None, "Evaluate at most this many batches.")
    flags.DEFINE_integer("save_every", 500, "Checkpoint every this many steps.")
    _define_recipe_flags()


# Recipe fields that make a stage what it is; every other field is a flag.
STAGE_FIELDS = ("model", "preset", "evaluation_budgets", "init_from")
# Help beyond "Override the recipe's <field>." for some of the flags.
_FLAG_HELP = {
    "global_batch_size": "Batch over all replicas.",
    "lr_schedule": "x0.1 at 80 % of the steps ('drop') or a cosine decay ('cosine').",
    "locations": "The training budget, e.g. '2' or '2,1'.",
    "backbone": "e.g. efficientnet-b3 or b3.",
    "pretrained": "Backbone weights: 'imagenet' or a Keras .h5 file.",
    "location_stop_gradient": "Detach the location module's inputs in training (the "
                              "authors' code).",
}


def recipe_flag_fields() -> List[dataclasses.Field]:
    """The Recipe fields that flags override, one flag of the same name each."""
    return [field for field in dataclasses.fields(Recipe) if field.name not in STAGE_FIELDS]


def _define_recipe_flags(flag_values=FLAGS) -> None:
    """One flag per recipe field, typed by the field (default None: the recipe's)."""
    for field in recipe_flag_fields():
        kind = str(field.type)   # the annotation's text (postponed annotations)
        text = f"Override the recipe's {field.name}. {_FLAG_HELP.get(field.name, '')}".strip()
        if field.name == "lr_schedule":
            flags.DEFINE_enum(field.name, None, ["drop", "cosine"], text,
                              flag_values=flag_values)  # training.SCHEDULES
        elif "bool" in kind:
            flags.DEFINE_bool(field.name, None, text, flag_values=flag_values)
        elif "float" in kind:
            flags.DEFINE_float(field.name, None, text, flag_values=flag_values)
        elif kind in ("int", "Optional[int]"):
            flags.DEFINE_integer(field.name, None, text, flag_values=flag_values)
        else:   # strings, and the budget tuple parsed by resolve_recipe
            flags.DEFINE_string(field.name, None, text, flag_values=flag_values)


def parse_budget(text: str, flag: str) -> Tuple[int, ...]:
    from tnet_tf import budget
    try:
        return budget.parse(text)
    except ValueError as error:
        raise FlagError(flag, str(error)) from None


def resolve_recipe(recipe: Recipe) -> Recipe:
    """The recipe with every flag that was given applied."""
    changes = {field.name: FLAGS[field.name].value for field in recipe_flag_fields()
               if FLAGS[field.name].value is not None}
    if FLAGS.locations is not None:
        changes["locations"] = parse_budget(FLAGS.locations, "locations")
    if FLAGS.backbone is not None:
        name = FLAGS.backbone if FLAGS.backbone in _backbones() else \
            f"efficientnet-{FLAGS.backbone}"
        if name not in _backbones():
            raise FlagError("backbone", f"{FLAGS.backbone!r} is not one of b0..b4 or "
                            f"{', '.join(_backbones())}")
        changes["backbone"] = name
        if FLAGS.epochs is None and name in BACKBONE_EPOCHS:
            changes["epochs"] = BACKBONE_EPOCHS[name]
    recipe = recipe.replace(**changes)
    if FLAGS.smoke:
        recipe = smoke_recipe(recipe)
    return recipe


def _backbones():
    from tnet_tf.config import BACKBONES
    return BACKBONES


def smoke_recipe(recipe: Recipe) -> Recipe:
    """The recipe shrunk for `--smoke`: sizes scaled to a 32 px base, 2 short epochs."""
    import tnet_tf
    base = tnet_tf.get_preset(recipe.preset).base_resolution
    return recipe.replace(input_size=max(SMOKE_BASE, round(recipe.input_size * SMOKE_BASE / base)),
                          epochs=min(recipe.epochs, 2), global_batch_size=8, pretrained=None,
                          backbone=None)


def model_config(recipe: Recipe):
    """The TNetConfig of a recipe (smoke runs: compact backbone, 32 px base)."""
    import tnet_tf
    from tnet_tf.config import TINY_SIZE_FIELDS

    preset = tnet_tf.get_preset(recipe.preset)
    backbone = dataclasses.replace(preset.backbone, **{
        key: value for key, value in (("name", recipe.backbone),
                                      ("stochastic_depth", recipe.stochastic_depth),
                                      ("spatial_dropout", recipe.spatial_dropout),
                                      ("pretrained", recipe.pretrained)) if value is not None})
    changes = dict(backbone=backbone, input_size=recipe.input_size, locations=recipe.locations)
    for name in ("dropout", "location_stop_gradient"):
        if getattr(recipe, name) is not None:
            changes[name] = getattr(recipe, name)
    if FLAGS.smoke:
        tiny = tnet_tf.get_preset("tiny", base_resolution=SMOKE_BASE)
        changes.update({name: getattr(tiny, name) for name in TINY_SIZE_FIELDS},
                       num_classes=SMOKE_CLASSES)
    return dataclasses.replace(preset, **changes)


def stage_dir(stage: str) -> str:
    return os.path.join(FLAGS.model_dir, stage)


def final_checkpoint(stage: str) -> str:
    return os.path.join(stage_dir(stage), "final")


def shard_pattern(split: str) -> str:
    return os.path.join(FLAGS.data_dir, f"{split}-*")


def validate(entry: Entry, stage: str, recipe: Optional[Recipe]):
    """Checks flags, data and checkpoints before any work; raises FlagError.
    Returns the training stage's TNetConfig (None for the tool stages)."""
    import tensorflow as tf
    from tnet_tf import budget

    if not FLAGS.model_dir:
        raise FlagError("model_dir", "is required (the run folder)")
    if not FLAGS.smoke and stage != "profile":
        if not FLAGS.data_dir:
            raise FlagError("data_dir", "is required (the folder of the TFRecord shards)")
        if not os.path.isdir(FLAGS.data_dir):
            raise FlagError("data_dir", f"{FLAGS.data_dir} does not exist")
        needed = [FLAGS.eval_split] if stage in TOOL_STAGES else ["train", FLAGS.eval_split]
        for split in needed:
            if not tf.io.gfile.glob(shard_pattern(split)):
                raise FlagError("data_dir", f"{FLAGS.data_dir} has no {split}-* shards; write "
                                f"them with python -m data_prep.{entry.dataset}")
    if FLAGS.global_batch_size is not None and FLAGS.global_batch_size < 1:
        raise FlagError("global_batch_size", f"{FLAGS.global_batch_size} must be >= 1")
    if FLAGS.epochs is not None and FLAGS.epochs < 1:
        raise FlagError("epochs", f"{FLAGS.epochs} must be >= 1")
    if FLAGS.strategy == "tpu" and not FLAGS.tpu and "TPU_NAME" not in os.environ:
        raise FlagError("tpu", "--strategy=tpu needs --tpu (or TPU_NAME)")
    if stage in TOOL_STAGES:
        checkpoint_stage = FLAGS.checkpoint_stage
        if checkpoint_stage not in entry.recipes:
            raise FlagError("checkpoint_stage", f"{checkpoint_stage!r} is not a stage of "
                            f"{entry.dataset}: {', '.join(entry.recipes)}")
        if stage != "profile" and not os.path.exists(final_checkpoint(checkpoint_stage) +
                                                     "/checkpoint"):
            raise FlagError("checkpoint_stage", f"no final checkpoint of {checkpoint_stage} in "
                            f"{final_checkpoint(checkpoint_stage)}; run --stage="
                            f"{checkpoint_stage} first")
        for text in budget_texts():
            parse_budget(text, "budgets")
        return None
    if recipe.init_from or FLAGS.init_checkpoint:
        source = FLAGS.init_checkpoint or final_checkpoint(recipe.init_from)
        if not (os.path.exists(source + ".index") or os.path.exists(source + "/checkpoint")):
            raise FlagError("init_checkpoint", f"{source} does not exist; run --stage="
                            f"{recipe.init_from} first or pass --init_checkpoint")
    try:
        config = model_config(recipe)
    except ValueError as error:
        raise FlagError("stage", f"invalid model for {stage}: {error}") from None
    if recipe.pretrained is not None:
        from tnet_tf import backbones
        try:
            backbones.weights_path(config.backbone.name, recipe.pretrained)
        except (OSError, RuntimeError) as error:
            raise FlagError("pretrained", str(error)) from None
    if recipe.model == "tnet":
        try:
            budget.check_reachable(recipe.locations, recipe.input_size, config.base_resolution,
                                   config.cell_fraction)
        except ValueError as error:
            raise FlagError("input_size", str(error)) from None
    return config


def budget_texts() -> List[str]:
    return [text for value in (FLAGS.budgets or []) for text in value.split(";") if text]


def save_run_info(stage: str, recipe: Optional[Recipe], config=None) -> None:
    """Prints the resolved recipe and flags and saves them in the stage folder."""
    os.makedirs(stage_dir(stage), exist_ok=True)
    info = {"stage": stage, "flags": {name: FLAGS[name].value for name in _own_flags()}}
    if recipe is not None:
        info["recipe"] = dataclasses.asdict(recipe)
    if config is not None:
        info["model_config"] = config.to_dict()
    print(json.dumps(info, indent=1, default=str))
    with open(os.path.join(stage_dir(stage), "run.json"), "w") as handle:
        json.dump(info, handle, indent=1, default=str)


def _own_flags() -> Sequence[str]:
    return [flag.name for flag in FLAGS.get_flags_for_module(sys.modules[__name__])]


def main_for(entry: Entry):
    """The absl `main` of an entry point."""
    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        run(entry)
    return main


def run(entry: Entry) -> None:
    """Validates the flags and runs `--stage`; bad flags end in a one-line error."""
    from experiments import stages

    stage = FLAGS.stage
    try:
        recipe = None if stage in TOOL_STAGES else resolve_recipe(entry.recipes[stage])
        if FLAGS.smoke and FLAGS.model_dir and not FLAGS.data_dir:
            FLAGS.data_dir = stages.make_smoke_data(os.path.join(FLAGS.model_dir, "smoke_data"))
            FLAGS.eval_split = "test"
        elif entry.generate_data is not None and FLAGS.model_dir:
            FLAGS.data_dir = FLAGS.data_dir or os.path.join(FLAGS.model_dir, "data")
            if not glob.glob(shard_pattern("train")):
                print(f"generating the {entry.dataset} dataset in {FLAGS.data_dir}")
                entry.generate_data(FLAGS.data_dir)
        config = validate(entry, stage, recipe)
    except FlagError as error:
        sys.exit(f"error: {error}")
    stages.seed_everything(FLAGS.seed)
    if stage in TOOL_STAGES:
        getattr(stages, stage)(entry)
    else:
        stages.train(entry, stage, recipe, config)
