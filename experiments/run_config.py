"""One run of a dataset entry point as a frozen, typed value.

`experiments.runner` reads the flags once into a `RunConfig`; the stages
(`experiments.stages`) are functions of it and never see flags, so a test
builds one with `resolve` and calls a stage in-process. The config holds the
paths, seed, strategy and smoke switch, the resolved `Recipe`, its
`TNetConfig` and the evaluation options; `save` writes it next to the
stage's checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from experiments.recipes import BACKBONE_EPOCHS, FieldError, Recipe

TOOL_STAGES = ("evaluate", "profile", "visualize")
PRECISIONS = ("mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# The datasets whose trained TNet the authors published (experiments.<dataset>.ENTRY).
RELEASE_DATASETS = ("fmow", "imagenet", "cub", "nabirds")
# --smoke: the "tiny" model at a 32 px base resolution on generated digits.
SMOKE_BASE = 32
SMOKE_CLASSES = 10


class FlagError(ValueError):
    """A bad run setting; the message names its flag."""

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
    # Writes the tiny dataset of --smoke (None: the cluttered digits of `stages`).
    smoke_data: Optional[Callable[[str], None]] = None
    # Object boxes per evaluation record that policy hit rates count (the report).
    object_boxes: int = 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one stage run needs; every field but entry, recipe and
    model_config is the flag of the same name.

    recipe / model_config: a training stage's resolved recipe and model; for
    the tool stages, those of `checkpoint_stage` (profile builds them;
    evaluate and visualize restore the stage's saved ones).
    budgets: evaluate's location budgets (None: the recipe's).
    release_checkpoint: evaluate / visualize / profile the authors' published
    weights of the checkpoint stage's model (a release checkpoint prefix or
    folder, read by `tnet_tf.release.load_model`) instead of a trained stage.
    """

    entry: Entry
    stage: str
    recipe: Recipe
    model_config: Any                       # tnet_tf.TNetConfig (MGNetConfig for MGNet)
    model_dir: str
    data_dir: Optional[str] = None
    seed: int = 0
    strategy: str = "default"
    tpu: Optional[str] = None
    mixed_precision: Optional[str] = None   # "mixed_bfloat16" or "mixed_float16"
    jit_compile: bool = False
    smoke: bool = False
    steps_per_epoch: Optional[int] = None
    save_every: int = 500
    init_checkpoint: Optional[str] = None
    checkpoint_stage: Optional[str] = None
    eval_split: Optional[str] = None
    eval_steps: Optional[int] = None
    budgets: Optional[Tuple[Tuple[int, ...], ...]] = None
    profile: bool = False
    export_attention: bool = False
    num_images: int = 8
    release_checkpoint: Optional[str] = None

    @property
    def is_training(self) -> bool:
        return self.stage not in TOOL_STAGES

    def stage_dir(self, stage: Optional[str] = None) -> str:
        return os.path.join(self.model_dir, stage or self.stage)

    def final_checkpoint(self, stage: Optional[str] = None) -> str:
        return os.path.join(self.stage_dir(stage), "final")

    def shard_pattern(self, split: str) -> str:
        return os.path.join(self.data_dir, f"{split}-*")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The run as JSON: its options, "recipe" and "model_config"."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.name not in ("entry", "recipe", "model_config")}
        return {"dataset": self.entry.dataset, **values,
                "recipe": dataclasses.asdict(self.recipe),
                "model_config": self.model_config.to_dict()}


def resolve(entry: Entry, stage: str, model_dir: str, *,
            recipe_changes: Optional[Mapping[str, Any]] = None,
            model_overrides: Optional[Mapping[str, Any]] = None, **options) -> RunConfig:
    """The run of `stage`: its recipe with `recipe_changes` and
    `model_overrides` applied (then shrunk by `smoke`), its model config and
    `options` (the other `RunConfig` fields; unset ones take the entry's
    defaults). Raises FlagError naming the bad setting."""
    options.setdefault("checkpoint_stage", entry.tnet_stages[-1])
    options.setdefault("eval_split", entry.eval_split)
    recipe_stage = options["checkpoint_stage"] if stage in TOOL_STAGES else stage
    if stage not in entry.recipes and stage not in TOOL_STAGES:
        raise FlagError("stage", f"{stage!r} is not a stage of {entry.dataset}: "
                        f"{', '.join(list(entry.recipes) + list(TOOL_STAGES))}")
    if recipe_stage not in entry.recipes:
        raise FlagError("checkpoint_stage", f"{recipe_stage!r} is not a stage of "
                        f"{entry.dataset}: {', '.join(entry.recipes)}")
    recipe = entry.recipes[recipe_stage]
    changes = dict(recipe_changes or {})
    backbone = dict((model_overrides or {}).get("backbone", {})).get("name")
    if backbone in BACKBONE_EPOCHS and "epochs" not in changes:
        changes["epochs"] = BACKBONE_EPOCHS[backbone]
    try:
        recipe = recipe.replace(**changes).override_model(**(model_overrides or {}))
    except FieldError as error:
        raise FlagError(error.field, error.message) from None
    smoke = options.get("smoke", False)
    if smoke:
        recipe = smoke_recipe(recipe)
    try:
        config = model_config(recipe, smoke)
    except ValueError as error:
        raise FlagError("stage", f"invalid model for {recipe_stage}: {error}") from None
    if options.get("release_checkpoint") and recipe.model != "mgnet":
        try:
            config = release_model_config(config, recipe.model)
        except ValueError as error:
            raise FlagError("release_checkpoint", str(error)) from None
    return RunConfig(entry=entry, stage=stage, recipe=recipe, model_config=config,
                     model_dir=model_dir, **options)


def smoke_recipe(recipe: Recipe) -> Recipe:
    """The recipe shrunk for `--smoke`: sizes scaled to a 32 px base, 2 short epochs."""
    import tnet_tf
    base = tnet_tf.get_preset(recipe.preset).base_resolution
    return recipe.replace(input_size=max(SMOKE_BASE, round(recipe.input_size * SMOKE_BASE / base)),
                          epochs=min(recipe.epochs, 2), global_batch_size=8)


def model_config(recipe: Recipe, smoke: bool = False):
    """The TNetConfig of a recipe: its preset with its overrides (smoke runs:
    the size of the "tiny" preset, 32 px base, 10 classes); for an MGNet
    recipe the MGNetConfig of that TNetConfig."""
    import tnet_tf
    from tnet_tf.config import TINY_SIZE_FIELDS

    overrides = dict(recipe.model_overrides)
    mgnet_names = {f.name for f in dataclasses.fields(tnet_tf.MGNetConfig)} - \
        {f.name for f in dataclasses.fields(tnet_tf.TNetConfig)}
    mgnet_overrides = {k: overrides.pop(k) for k in list(overrides) if k in mgnet_names}
    if smoke:
        tiny = tnet_tf.get_preset("tiny", base_resolution=SMOKE_BASE)
        overrides.update({name: getattr(tiny, name) for name in TINY_SIZE_FIELDS},
                         num_classes=SMOKE_CLASSES)
    config = tnet_tf.get_preset(recipe.preset, input_size=recipe.input_size,
                                locations=recipe.locations, **overrides)
    if recipe.model != "mgnet":
        if mgnet_overrides:
            raise ValueError(f"MGNet fields for a {recipe.model} model: "
                             f"{', '.join(sorted(mgnet_overrides))}")
        return config
    if smoke:
        mgnet_overrides.pop("glimpse_size", None)     # the smoke base resolution
    return tnet_tf.MGNetConfig.from_tnet(config, glimpses=recipe.glimpses, **mgnet_overrides)


def release_model_config(config, recipe_model: str):
    """A model config as the authors' published weights need it: the release's
    geometry (`tnet_tf.release.release_fields`), no pretrained download."""
    from tnet_tf import release

    config = release.release_config(config) if recipe_model == "tnet" else config
    return dataclasses.replace(config, backbone=dataclasses.replace(config.backbone,
                                                                    pretrained=None))


def validate(run: RunConfig) -> RunConfig:
    """Checks data, checkpoints and settings before any work; raises FlagError."""
    import tensorflow as tf
    from tnet_tf import backbones, budget

    if not run.model_dir:
        raise FlagError("model_dir", "is required (the run folder)")
    if run.stage != "profile":
        if not run.data_dir:
            raise FlagError("data_dir", "is required (the folder of the TFRecord shards)")
        if not os.path.isdir(run.data_dir):
            raise FlagError("data_dir", f"{run.data_dir} does not exist")
        needed = ["train", run.eval_split] if run.is_training else [run.eval_split]
        for split in needed:
            if not tf.io.gfile.glob(run.shard_pattern(split)):
                raise FlagError("data_dir", f"{run.data_dir} has no {split}-* shards; write "
                                f"them with python -m data_prep.{run.entry.dataset}")
    if run.strategy not in STRATEGIES:
        raise FlagError("strategy", f"{run.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if run.mixed_precision not in (None, *PRECISIONS):
        raise FlagError("mixed_precision", f"{run.mixed_precision!r} is not one of "
                        f"{', '.join(PRECISIONS)}")
    if run.strategy == "tpu" and not run.tpu and "TPU_NAME" not in os.environ:
        raise FlagError("tpu", "--strategy=tpu needs --tpu (or TPU_NAME)")
    for name in ("steps_per_epoch", "eval_steps", "save_every", "num_images"):
        value = getattr(run, name)
        if value is not None and value < 1:
            raise FlagError(name, f"{value} must be >= 1")
    for locations in (run.budgets if run.recipe.model == "tnet" else None) or ():
        try:
            budget.check(locations, run.model_config.grid_size)
        except ValueError as error:
            raise FlagError("budgets", str(error)) from None
    if not run.is_training:
        stage = run.checkpoint_stage
        if run.stage == "visualize" and run.recipe.model == "baseline":
            raise FlagError("checkpoint_stage", f"{stage} is a baseline; visualize draws the "
                            f"attention of a TNet or MGNet stage")
        if run.release_checkpoint:
            return check_release(run)
        if run.stage != "profile" and not os.path.exists(run.final_checkpoint(stage) +
                                                         "/checkpoint"):
            raise FlagError("checkpoint_stage", f"no final checkpoint of {stage} in "
                            f"{run.final_checkpoint(stage)}; run --stage={stage} first")
        return run
    if run.release_checkpoint:
        raise FlagError("release_checkpoint", "is read by --stage=evaluate, visualize or "
                        "profile; training stages start from --init_checkpoint")
    recipe, config = run.recipe, run.model_config
    if recipe.init_from or run.init_checkpoint:
        source = init_source(run)
        if not (os.path.exists(source + ".index") or os.path.exists(source + "/checkpoint")):
            raise FlagError("init_checkpoint", f"{source} does not exist; run --stage="
                            f"{recipe.init_from} first or pass --init_checkpoint")
    if config.backbone.pretrained is not None:
        try:
            backbones.weights_path(config.backbone.name, config.backbone.pretrained)
        except (OSError, RuntimeError) as error:
            raise FlagError("pretrained", str(error)) from None
    if recipe.model == "tnet":
        try:
            budget.check_reachable(recipe.locations, recipe.input_size, config.base_resolution,
                                   config.cell_fraction)
        except ValueError as error:
            raise FlagError("input_size", str(error)) from None
    return run


def check_release(run: RunConfig) -> RunConfig:
    """Checks a run that reads the authors' published weights; raises FlagError."""
    from tnet_tf import release

    if run.recipe.model == "mgnet":
        raise FlagError("release_checkpoint", f"{run.checkpoint_stage} is an MGNet stage; "
                        f"the release has TNet and baseline weights only")
    if run.smoke:
        raise FlagError("release_checkpoint", "--smoke builds a toy model that no release "
                        "checkpoint fits")
    try:
        release.checkpoint_prefix(run.release_checkpoint)
    except FileNotFoundError as error:
        raise FlagError("release_checkpoint", str(error)) from None
    return run


def backbone_name(text: str) -> str:
    """A backbone flag's value (e.g. "b3" or "efficientnet-b3") as its full name."""
    from tnet_tf.config import BACKBONES
    name = text if text in BACKBONES else f"efficientnet-{text}"
    if name not in BACKBONES:
        raise FlagError("backbone", f"{text!r} is not one of b0..b4 or {', '.join(BACKBONES)}")
    return name


def init_source(run: RunConfig) -> Optional[str]:
    """The checkpoint that initialises a training stage, if any."""
    return run.init_checkpoint or (run.recipe.init_from and
                                   run.final_checkpoint(run.recipe.init_from))


def is_chief() -> bool:
    """Whether this process writes the run's files: yes unless `TF_CONFIG`
    names another task the chief (the "chief" task, else worker 0)."""
    info = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = info.get("task") or {}
    if task.get("type") in (None, "chief"):
        return True
    return (task["type"] == "worker" and int(task.get("index", 0)) == 0
            and "chief" not in info.get("cluster", {}))


def save(run: RunConfig) -> str:
    """Prints the run and saves it as <stage folder>/run.json (on the chief only)."""
    path = os.path.join(run.stage_dir(), "run.json")
    if not is_chief():
        return path
    os.makedirs(run.stage_dir(), exist_ok=True)
    text = json.dumps(run.to_dict(), indent=1, default=str)
    print(text)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def saved_run(folder: str) -> Tuple[Recipe, Any]:
    """The resolved recipe and model config a stage saved in `folder`/run.json."""
    import tnet_tf
    with open(os.path.join(folder, "run.json")) as handle:
        info = json.load(handle)
    recipe = Recipe.from_dict(info["recipe"])
    kind = tnet_tf.MGNetConfig if recipe.model == "mgnet" else tnet_tf.TNetConfig
    return recipe, kind.from_dict(info["model_config"])

