"""The paper's training recipes, one per stage (replication.md, section 3).

A `Recipe` holds everything a stage needs besides the data location: the
model (a preset plus overrides), what it is trained on, and the learning
rule. Entry points print and save the resolved recipe with every run; any
training field can be overridden by a flag of the same name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from tnet_tf.data.pipeline import CACHES
from tnet_tf.losses import REWARDS
from tnet_tf.tnet import SELECTIONS
from tnet_tf.training import SCHEDULES

MODELS = ("tnet", "baseline", "mgnet")


class FieldError(ValueError):
    """A bad recipe value; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> Dict[str, Any]:
    """`base` updated by `changes`, nested dicts (the backbone's fields) merged."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = merge(merged[key], value)
        merged[key] = value
    return merged


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training stage.

    model: "tnet", "baseline" or "mgnet". preset: tnet_tf preset name (MGNet
    takes its classes, backbone and heads, with glimpses of its base
    resolution: `MGNetConfig.from_tnet`).
    model_overrides: `TNetConfig` fields that differ from the preset, applied
    with `get_preset(preset, **model_overrides)`; "backbone" is a dict of
    `BackboneConfig` fields, e.g. {"dropout": 0.5, "backbone":
    {"stochastic_depth": 0.3}} (the stage's regularisation, pretrained
    weights, another backbone); for MGNet also `MGNetConfig` fields
    (glimpse_size, gradient_scale, ...).
    glimpses: MGNet only; T, the glimpses of training (evaluation reports
    every early exit t <= T).
    input_size / locations: the training input side and TNet budget (the
    model config takes them too).
    evaluation_budgets: the budgets `--stage=evaluate` reports.
    epochs, global_batch_size, learning_rate, lr_schedule ("drop": x0.1 at
    80 % of the steps, as in the paper; "cosine": cosine decay to 0; both
    span `epochs`), stop_after_epochs (early stop: train this many epochs of
    the `epochs`-epoch schedule; None trains them all),
    backbone_learning_rate (None: same), weight_decay (L2, batch norm
    excluded), lambda_f / lambda_c / lambda_r / max_feature_level (eqs. 1-3).
    random_warmup_steps: first steps that attend uniformly random cells.
    Policy options beyond the paper (off by default; `tnet_tf.training.TNet.compile`):
    selection ("top_k", the paper, or "sample": Gumbel-top-k in training),
    exploration_epsilon / exploration_steps (epsilon-random cells after the
    warm-up, decayed linearly over that many steps), entropy_weight (an
    entropy bonus on the location distributions), reward ("correct", the
    paper's 0/1, or "log_prob_gain"). The location logits' scale is a model
    override (location_scale, learn_location_scale, location_normalize).
    contrastive_weight / contrastive_margin: the authors' contrastive loss on
    the pooled features (0: off; their CUB / NABirds runs: 100 and 0.4).
    init_from: the stage whose final checkpoint initialises this one.
    bbox_crops: train and evaluate on the context crops around the boxes.
    augment: the B.2 training augmentation (off for digits: a flip changes them).
    cache: keep the training set in memory (`pipeline.InputConfig.cache`:
      None, "records" or "decoded"; for small datasets).
    """

    model: str = "tnet"
    preset: str = "fmow"
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_size: int = 448
    locations: Tuple[int, ...] = (2,)
    glimpses: int = 4
    evaluation_budgets: Tuple[Tuple[int, ...], ...] = ((0,), (1,), (2,), (3,))
    epochs: int = 40
    stop_after_epochs: Optional[int] = None
    global_batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "drop"
    backbone_learning_rate: Optional[float] = None
    weight_decay: float = 0.0
    lambda_f: float = 0.1
    lambda_c: float = 1.0
    lambda_r: float = 1.0
    max_feature_level: Optional[int] = None
    random_warmup_steps: int = 0
    selection: str = "top_k"
    exploration_epsilon: float = 0.0
    exploration_steps: int = 0
    entropy_weight: float = 0.0
    reward: str = "correct"
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.4
    init_from: Optional[str] = None
    bbox_crops: bool = False
    augment: bool = True
    cache: Optional[str] = None

    def __post_init__(self):
        _check(self.model in MODELS, "model", f"{self.model!r} is not one of {', '.join(MODELS)}")
        _check(self.lr_schedule in SCHEDULES, "lr_schedule",
               f"{self.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
        _check(self.selection in SELECTIONS, "selection",
               f"{self.selection!r} is not one of {', '.join(SELECTIONS)}")
        _check(self.reward in REWARDS, "reward",
               f"{self.reward!r} is not one of {', '.join(REWARDS)}")
        _check(0.0 <= self.exploration_epsilon <= 1.0, "exploration_epsilon",
               f"{self.exploration_epsilon} must be in [0, 1]")
        _check(self.cache in (None, *CACHES), "cache",
               f"{self.cache!r} is not one of {', '.join(CACHES)}")
        for name in ("input_size", "epochs", "global_batch_size"):
            _check(getattr(self, name) >= 1, name, f"{getattr(self, name)} must be >= 1")
        _check(self.stop_after_epochs is None or self.stop_after_epochs >= 1,
               "stop_after_epochs", f"{self.stop_after_epochs} must be >= 1")
        for name in ("learning_rate", "backbone_learning_rate"):
            value = getattr(self, name)
            _check(value is None or value > 0, name, f"{value} must be > 0")
        for name in ("weight_decay", "lambda_f", "lambda_c", "lambda_r", "random_warmup_steps",
                     "contrastive_weight", "exploration_steps", "entropy_weight"):
            _check(getattr(self, name) >= 0, name, f"{getattr(self, name)} must be >= 0")
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))

    @property
    def training_epochs(self) -> int:
        """The epochs `fit` runs: `epochs`, or fewer when stopped early."""
        return min(self.epochs, self.stop_after_epochs or self.epochs)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def override_model(self, **changes) -> "Recipe":
        """The recipe with `changes` merged into its model overrides."""
        return self.replace(model_overrides=merge(self.model_overrides, changes))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Recipe":
        """The recipe `dataclasses.asdict` saved (JSON lists back to tuples);
        keys of fields that no longer exist are ignored (older runs)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: _tuples(value) for key, value in values.items() if key in names})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise FieldError(field, message)



_FMOW_BASELINE = Recipe(model="baseline", input_size=224, weight_decay=1e-5, epochs=60,
                        model_overrides={"dropout": 0.75, "backbone": {"stochastic_depth": 0.5}},
                        evaluation_budgets=())

FMOW: Dict[str, Recipe] = {
    "train_448": Recipe(input_size=448, locations=(2,), epochs=40, learning_rate=1e-3,
                        lambda_c=0.2, lambda_r=0.2,
                        model_overrides={"dropout": 0.5, "backbone": {"stochastic_depth": 0.3}}),
    "finetune_896": Recipe(input_size=896, locations=(2, 1), epochs=10, learning_rate=1e-3,
                           lambda_c=0.05, lambda_r=0.05, max_feature_level=2,
                           model_overrides={"dropout": 0.5,
                                            "backbone": {"stochastic_depth": 0.5}},
                           init_from="train_448",
                           evaluation_budgets=((0,), (1,), (2,), (3,), (2, 1), (2, 2))),
    "baseline_bbox": _FMOW_BASELINE.replace(epochs=65, bbox_crops=True),
    "baseline_224": _FMOW_BASELINE,
    "baseline_448": _FMOW_BASELINE.replace(input_size=448, global_batch_size=32, epochs=30)
                                  .override_model(backbone={"stochastic_depth": 0.3}),
    "baseline_896": _FMOW_BASELINE.replace(input_size=896, global_batch_size=32, epochs=30)
                                  .override_model(dropout=0.3,
                                                  backbone={"stochastic_depth": 0.2}),
}

IMAGENET: Dict[str, Recipe] = {
    "train": Recipe(preset="imagenet", input_size=224, locations=(3,), epochs=200,
                    learning_rate=1e-4, lambda_c=0.3, lambda_r=0.3,
                    model_overrides={"backbone": {"spatial_dropout": 0.5}},
                    evaluation_budgets=((0,), (1,), (2,), (3,), (4,), (5,))),
    # Dropout keep probability 0.375 (drop 0.625). The 200-epoch schedule (x0.1 at
    # epoch 160), early-stopped after 175 epochs ("we early-stop after 175 epochs").
    "baseline": Recipe(model="baseline", preset="imagenet", input_size=224, epochs=200,
                       stop_after_epochs=175, learning_rate=1e-4,
                       model_overrides={"backbone": {"spatial_dropout": 0.625}},
                       evaluation_budgets=()),
}


def _birds(preset: str) -> Dict[str, Recipe]:
    tnet = Recipe(preset=preset, input_size=448, locations=(5,), epochs=200,
                  learning_rate=1e-3, backbone_learning_rate=1e-4, lambda_c=0.3, lambda_r=0.3,
                  weight_decay=1e-4,
                  model_overrides={"dropout": 0.75, "backbone": {"stochastic_depth": 0.5,
                                                                 "pretrained": "imagenet"}},
                  contrastive_weight=100.0, contrastive_margin=0.4,   # every CUB run, baselines too
                  evaluation_budgets=((0,), (1,), (3,), (5,)))
    return {"train": tnet,
            "baseline": tnet.replace(model="baseline", evaluation_budgets=())}


CUB = _birds("cub")
NABIRDS = _birds("nabirds")
# TNet-B4 trains for 125 epochs in the authors' fine-grained recipe (CUB, NABirds).
BACKBONE_EPOCHS = {"efficientnet-b4": 125}


# The embedded demo on cluttered digits (experiments.digits): the fMoW recipe in
# miniature, with a cosine learning-rate decay and a warm-up of random cells
# (without it top-k selection can lock onto cells that never show the digit).
# The 128 px stage runs well past the classifier's take-off (docs/design_notes.md).
_DIGITS_TNET = Recipe(preset="digits", input_size=128, locations=(2,), epochs=10,
                      learning_rate=1e-3, lr_schedule="cosine", lambda_c=0.3, lambda_r=0.3,
                      random_warmup_steps=300, augment=False, cache="records",
                      evaluation_budgets=((0,), (1,), (2,)))
_DIGITS_BASELINE = Recipe(model="baseline", preset="digits", input_size=64, epochs=8,
                          lr_schedule="cosine", augment=False, cache="records",
                          evaluation_budgets=())
# MGNet beside TNet: 4 glimpses of 64 px (TNet's base resolution) from the 256 px
# canvas, the gradient scale of the paper's small backbone (ResNet-18: s = 0.02).
_DIGITS_MGNET = Recipe(model="mgnet", preset="digits", input_size=256, glimpses=4, epochs=6,
                       lr_schedule="cosine", augment=False, cache="records",
                       evaluation_budgets=(), model_overrides={"gradient_scale": 0.02})
DIGITS: Dict[str, Recipe] = {
    "train_128": _DIGITS_TNET,
    # Level 3's batch-norm statistics are learnt here: budgets with 3 levels
    # are evaluated from this stage on. Dropout 0.5 as in fMoW's fine-tuning:
    # this stage fits its training canvases.
    "finetune_256": _DIGITS_TNET.replace(input_size=256, locations=(2, 1), epochs=6,
                                         random_warmup_steps=0, init_from="train_128",
                                         evaluation_budgets=((0,), (1,), (2,), (2, 1), (2, 2)))
                                .override_model(dropout=0.5),
    "baseline_64": _DIGITS_BASELINE,
    "baseline_256": _DIGITS_BASELINE.replace(input_size=256),
    "mgnet_256": _DIGITS_MGNET,
}
# Megapixel MNIST (experiments.megapixel_mnist): 5 digits of 28 px and line noise on
# 1500 px canvases. The demo's compact CNN at a 192 px base, a 7x7 grid of quarter
# cells and 3 levels: the whole canvas (digits of 3.6 px, box-filtered so that their
# strokes survive), 4 cells of 375 px (14 px digits), 1 cell of 94 px in each (57 px
# digits). The backbone starts from a digit classifier trained on glimpses of the
# training canvases' target digits (pretrain_digits), as the paper's TNets start from
# ImageNet weights. Beyond the paper: a learnt location-logit scale starting at 8
# (the normalised logits alone keep 49 cells near uniform), epsilon-random cells
# after the warm-up, per-feature rewards (lambda_c = lambda_r = 0.3).
_MEGAPIXEL_TNET = Recipe(
    preset="digits", input_size=1500, locations=(4, 1), epochs=4, global_batch_size=16,
    learning_rate=1e-3, lr_schedule="cosine", lambda_c=0.3, lambda_r=0.3,
    random_warmup_steps=150, exploration_epsilon=0.2, exploration_steps=300, augment=False,
    init_from="pretrain_digits",
    model_overrides={"base_resolution": 192, "grid_size": 7, "cell_fraction": 0.25,
                     "location_scale": 8.0, "learn_location_scale": True, "dropout": 0.2,
                     "glimpse_antialias": True},
    evaluation_budgets=((0,), (2,), (4,), (2, 1), (4, 1)))
MEGAPIXEL_MNIST: Dict[str, Recipe] = {
    "train_1500": _MEGAPIXEL_TNET,
    "baseline_64": _DIGITS_BASELINE.replace(input_size=64, epochs=8, cache=None),
    # MGNet with glimpses of 64 px (the demo's base) from the 512 px canvas; regions
    # down to 12.5 % of the side (64 px at 512: full resolution), so that one region
    # can frame a digit.
    "mgnet_512": _DIGITS_MGNET.replace(input_size=512, glimpses=4, epochs=6, cache=None)
                              .override_model(min_scale=0.125, max_scale=0.5),
}

# --quick: 4,000 training canvases and a few hundred steps.
DIGITS_QUICK: Dict[str, Recipe] = {
    "train_128": DIGITS["train_128"].replace(epochs=4, random_warmup_steps=100),
    "finetune_256": DIGITS["finetune_256"].replace(epochs=1),
    "baseline_64": DIGITS["baseline_64"].replace(epochs=2),
    "baseline_256": DIGITS["baseline_256"].replace(epochs=1),
    "mgnet_256": DIGITS["mgnet_256"].replace(epochs=1),
}
