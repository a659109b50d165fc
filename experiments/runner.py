"""The flags of the dataset entry points, read once into a `RunConfig`.

An entry point (e.g. `experiments/fmow.py`) calls `define_flags` with its
`Entry` and runs `main_for(entry)`: the flags become one frozen
`run_config.RunConfig` (`read_flags`), which `experiments.stages.run`
validates, saves and runs. This is the only module of `experiments/`
besides the entry points that reads `FLAGS`.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import List, Optional, Sequence

from absl import app, flags

from experiments import stages
from experiments.recipes import CACHES, REWARDS, SCHEDULES, SELECTIONS, Recipe
from experiments.run_config import (PRECISIONS, STRATEGIES, TOOL_STAGES, Entry, FlagError,
                                    RunConfig, backbone_name, resolve)

FLAGS = flags.FLAGS
__all__ = ["Entry", "FlagError", "define_flags", "main_for", "read_flags", "run", "start"]

# Recipe fields that make a stage what it is; every other field is a flag.
STAGE_FIELDS = ("model", "preset", "model_overrides", "evaluation_budgets", "init_from")
# Flags that override the model config: flag name -> TNetConfig field
# ("backbone.<field>": a BackboneConfig field); typed by that field.
MODEL_FLAGS = {
    "dropout": "dropout",
    "location_stop_gradient": "location_stop_gradient",
    "backbone": "backbone.name",
    "stochastic_depth": "backbone.stochastic_depth",
    "spatial_dropout": "backbone.spatial_dropout",
    "pretrained": "backbone.pretrained",
    "location_scale": "location_scale",
    "learn_location_scale": "learn_location_scale",
    "location_normalize": "location_normalize",
    "glimpse_antialias": "glimpse_antialias",
}
# Recipe fields whose flag takes one of these values.
ENUM_FLAGS = {"lr_schedule": SCHEDULES, "cache": CACHES, "selection": SELECTIONS,
              "reward": REWARDS}
# Help beyond "Override the recipe's <field>." for some of the flags.
_FLAG_HELP = {
    "global_batch_size": "Batch over all replicas.",
    "lr_schedule": "x0.1 at 80 % of the steps ('drop') or a cosine decay ('cosine').",
    "locations": "The training budget, e.g. '2' or '2,1'.",
    "backbone": "e.g. efficientnet-b3 or b3.",
    "pretrained": "Backbone weights: 'imagenet' or a Keras .h5 file.",
    "cache": "Keep the training set in memory: 'records' (JPEG bytes) or 'decoded' (pixels).",
    "location_stop_gradient": "Detach the location module's inputs in training (the "
                              "authors' code).",
    "glimpse_antialias": "Box-filter each glimpse (k x k image pixels per glimpse pixel).",
    "location_scale": "Multiply the location logits (1: the paper; larger: sharper).",
    "learn_location_scale": "Learn the location logits' scale, from --location_scale.",
    "location_normalize": "L2-normalise the location logits (the paper).",
    "selection": "Training cells: 'top_k' (the paper) or 'sample' (Gumbel-top-k).",
    "reward": "'correct' (the paper's 0/1) or 'log_prob_gain' (the true class's gain).",
    "exploration_epsilon": "After the warm-up, each glimpse draws random cells with this "
                           "probability, decayed to 0 over --exploration_steps.",
    "entropy_weight": "Weight of an entropy bonus on the location distributions.",
}


def define_flags(entry: Entry, default_stage: str, extra_stages: Sequence[str] = (),
                 flag_values=FLAGS) -> None:
    """Defines the flags of an entry point; `extra_stages` are stages the
    entry point runs itself (e.g. the digits demo's "all"). Every flag but
    --stage and the recipe / model ones is the `RunConfig` field of its name."""
    stage_names = list(extra_stages) + list(entry.recipes) + list(TOOL_STAGES)
    flags.DEFINE_enum("stage", default_stage, stage_names, "What to run.",
                      flag_values=flag_values)
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy.",
                      flag_values=flag_values)
    flags.DEFINE_enum("mixed_precision", None, list(PRECISIONS), "Keras mixed-precision policy "
                      "(mixed_float16 adds loss scaling); the location distributions, "
                      "rewards, baseline and losses stay float32.", flag_values=flag_values)
    run_flags = [
        ("string", "data_dir", None, "Folder of the TFRecord shards (data_prep output)."),
        ("string", "model_dir", None, "Run folder; each stage writes to its subfolder."),
        ("string", "tpu", None, "TPU name or address for --strategy=tpu."),
        ("integer", "steps_per_epoch", None, "Default: training images / global batch."),
        ("bool", "jit_compile", False, "Compile the train and eval steps with XLA (TPUs "
         "need it; on a CPU it was slower)."),
        ("integer", "seed", 0, "Seed of weights, data order and augmentation."),
        ("bool", "smoke", False, "Run the stage end to end on a tiny generated dataset with a "
         "compact model, to check an installation (about a minute)."),
        ("string", "init_checkpoint", None, "Checkpoint that initialises the stage; default: "
         "the final checkpoint of the recipe's init_from stage."),
        ("string", "checkpoint_stage", entry.tnet_stages[-1], "evaluate / visualize / "
         "profile: the stage whose final checkpoint is used."),
        ("string", "eval_split", entry.eval_split, "Shard prefix to evaluate."),
        ("multi_string", "budgets", None, "evaluate: location budgets, e.g. '0;1;2,1'; "
         "default: the recipe's."),
        ("bool", "profile", False, "evaluate: also measure ms/image and memory."),
        ("bool", "export_attention", False, "evaluate: CSV of every attended box."),
        ("integer", "num_images", 8, "visualize: images to draw."),
        ("string", "release_checkpoint", None, "evaluate / visualize / profile: the authors' "
         "published weights of the --checkpoint_stage model (a checkpoint prefix, e.g. "
         "weights/ckpt-1234, or its folder) instead of a trained stage."),
        ("integer", "eval_steps", None, "Evaluate at most this many batches."),
        ("integer", "save_every", 500, "Checkpoint every this many steps."),
    ]
    for kind, name, default, text in run_flags:
        getattr(flags, f"DEFINE_{kind}")(name, default, text, flag_values=flag_values)
    _define_recipe_flags(flag_values)


def recipe_flag_fields() -> List[dataclasses.Field]:
    """The Recipe fields that flags override, one flag of the same name each."""
    return [field for field in dataclasses.fields(Recipe) if field.name not in STAGE_FIELDS]


def _model_field(path: str) -> dataclasses.Field:
    from tnet_tf.config import BackboneConfig, TNetConfig
    owner, name = (BackboneConfig, path.split(".")[1]) if "." in path else (TNetConfig, path)
    return next(field for field in dataclasses.fields(owner) if field.name == name)


def _define_recipe_flags(flag_values=FLAGS) -> None:
    """One flag per recipe field and per `MODEL_FLAGS` entry, typed by its
    field (default None: the recipe's)."""
    fields = [(field.name, field) for field in recipe_flag_fields()]
    fields += [(name, _model_field(path)) for name, path in MODEL_FLAGS.items()]
    for name, field in fields:
        kind = str(field.type)   # the annotation's text (postponed annotations)
        owner = "recipe's" if name not in MODEL_FLAGS else "model config's"
        text = f"Override the {owner} {name}. {_FLAG_HELP.get(name, '')}".strip()
        if name in ENUM_FLAGS:
            flags.DEFINE_enum(name, None, list(ENUM_FLAGS[name]), text, flag_values=flag_values)
        elif "bool" in kind:
            flags.DEFINE_bool(name, None, text, flag_values=flag_values)
        elif "float" in kind:
            flags.DEFINE_float(name, None, text, flag_values=flag_values)
        elif kind in ("int", "Optional[int]"):
            flags.DEFINE_integer(name, None, text, flag_values=flag_values)
        else:   # strings, and the budget tuple parsed by read_flags
            flags.DEFINE_string(name, None, text, flag_values=flag_values)


def _budget(text: str, flag: str):
    from tnet_tf import budget
    try:
        return budget.parse(text)
    except ValueError as error:
        raise FlagError(flag, str(error)) from None


def read_flags(entry: Entry, stage: Optional[str] = None, flag_values=FLAGS) -> RunConfig:
    """The run that the flags ask for (`stage` overrides --stage); raises
    FlagError naming the bad flag."""
    values = {name: flag_values[name].value for name in flag_values}
    recipe_changes = {field.name: values[field.name] for field in recipe_flag_fields()
                      if values[field.name] is not None}
    if "locations" in recipe_changes:
        recipe_changes["locations"] = _budget(recipe_changes["locations"], "locations")
    model_overrides = {}
    for name, path in MODEL_FLAGS.items():
        if values[name] is not None:
            value = backbone_name(values[name]) if name == "backbone" else values[name]
            if "." in path:
                model_overrides.setdefault("backbone", {})[path.split(".")[1]] = value
            else:
                model_overrides[path] = value
    options = {field.name: values[field.name] for field in dataclasses.fields(RunConfig)
               if field.name in values and field.name not in ("stage", "budgets")}
    budgets = [text for value in values["budgets"] or [] for text in value.split(";") if text]
    if budgets:
        options["budgets"] = tuple(_budget(text, "budgets") for text in budgets)
    return resolve(entry, stage or values["stage"], recipe_changes=recipe_changes,
                   model_overrides=model_overrides, **options)


def run(entry: Entry, stage: Optional[str] = None):
    """Reads the flags and runs the stage; bad flags end in a one-line error."""
    try:
        return stages.run(read_flags(entry, stage))
    except FlagError as error:
        sys.exit(f"error: {error}")


def run_stages(entry: Entry, plan: Sequence[str]) -> None:
    """Runs the training stages `plan` in order (a demo's --stage=all), keeping
    those an earlier run finished; prints each with the time elapsed."""
    import os
    import time

    started = time.time()
    for number, stage in enumerate(plan, start=1):
        if os.path.exists(os.path.join(FLAGS.model_dir, stage, "final", "checkpoint")):
            print(f"[{number}/{len(plan) + 1}] {stage}: finished in an earlier run, kept")
            continue
        print(f"[{number}/{len(plan) + 1}] {stage} (elapsed {minutes(time.time() - started)})",
              flush=True)
        run(entry, stage)
    print(f"[{len(plan) + 1}/{len(plan) + 1}] report (elapsed "
          f"{minutes(time.time() - started)})", flush=True)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def main_for(entry: Entry):
    """The absl `main` of an entry point."""
    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        run(entry)
    return main


def start(entry: Entry, default_stage: str) -> None:
    """A dataset entry point's command: defines its flags and runs it. Called
    under `if __name__ == "__main__"`, so importing the entry point defines
    no flags."""
    define_flags(entry, default_stage)
    app.run(main_for(entry))
