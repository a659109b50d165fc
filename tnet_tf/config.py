"""Model configurations and the paper's named presets.

Configurations are frozen dataclasses: they flow into the model constructors
as objects, are saved next to checkpoints (`to_dict` / `from_dict`), and are
changed with `dataclasses.replace` or `get_preset(name, **overrides)`.

The presets hold the architectures of the paper (Appendix B.1, Tables 4-5)
and of the authors' CUB / NABirds release; the training recipes live with
the experiments.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from tnet_tf import budget

BACKBONES = ("compact", "bagnet77",) + tuple(f"efficientnet-b{i}" for i in range(5)) + ("resnet50",)
COMPACT_NORMS = ("group", "batch")
LOCATION_MODULES = ("context", "squeeze_excitation")
POSITIONAL_FUSIONS = ("concat_dense", "add_silu")
CODE_VARIANTS = ("paper", "release")
INITIALIZERS = ("glorot", "efficientnet")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """The feature extraction module.

    Attributes:
      name: "bagnet77", "efficientnet-b0" .. "efficientnet-b4", "resnet50"
        (ResNet-50 v1.5, MGNet's backbone) or "compact" (a small CNN for CPU
        demos and tests).
      stochastic_depth: EfficientNet only; the maximum drop probability of
        stochastic depth (Keras' `drop_connect_rate`: block b of B drops
        its residual branch with probability `stochastic_depth * b / B`).
      spatial_dropout: BagNet-77 only; drop probability of the spatial
        dropout on the output of the last 1x1 convolution (512 channels,
        after its Leaky ReLU, before pooling), as in the authors' code.
      leaky_relu_alpha: BagNet-77 only; negative slope of Leaky ReLU.
      pretrained: EfficientNet only; None (random init), "imagenet" (Keras
        download, needs internet) or the path of a Keras EfficientNet weight
        file (`efficientnetb0_notop.h5` or one saved by `save_weights`).
      width: "compact" only; channels of its first stage (doubled per stage).
      norm: "compact" only; "group" (per-image group normalisation with
        `norm_groups` groups) or "batch" (batch normalisation with moving
        statistics per TNet level, `backbones.LevelBatchNormalization`).
      norm_groups: "compact" only; groups of its group normalisation.
      convs_per_stage: "compact" only; the number of 3x3 convs in each of
        its 4 stages (the first conv of a stage has stride 2).
      location_layer: name of the layer whose output feeds the location
        module; None takes the backbone's default (BagNet-77: the 13th
        ConvBlock; EfficientNet: the last block of stage 4, which is the 8th
        MBConv block of B0).
    """

    name: str = "efficientnet-b0"
    stochastic_depth: float = 0.0
    spatial_dropout: float = 0.0
    leaky_relu_alpha: float = 0.2
    pretrained: Optional[str] = None
    width: int = 16
    norm: str = "group"
    norm_groups: int = 1
    convs_per_stage: Tuple[int, ...] = (2, 2, 2, 2)
    location_layer: Optional[str] = None

    def __post_init__(self):
        _check_choice("backbone.name", self.name, BACKBONES)
        _check_probability("backbone.stochastic_depth", self.stochastic_depth)
        _check_probability("backbone.spatial_dropout", self.spatial_dropout)
        if self.pretrained is not None and not self.name.startswith("efficientnet"):
            raise ValueError(f"backbone.pretrained: {self.name} has no published Keras weights; "
                             "pretrained weights are supported for efficientnet-b0..b4 only.")
        if self.width < 1:
            raise ValueError(f"backbone.width must be >= 1, got {self.width}")
        _check_choice("backbone.norm", self.norm, COMPACT_NORMS)
        object.__setattr__(self, "convs_per_stage", tuple(int(n) for n in self.convs_per_stage))
        if len(self.convs_per_stage) != 4 or min(self.convs_per_stage) < 1:
            raise ValueError(f"backbone.convs_per_stage must be 4 counts >= 1, got "
                             f"{self.convs_per_stage}")


@dataclasses.dataclass(frozen=True)
class TNetConfig:
    """A TNet architecture (and, through `backbone` and `dropout`, its baseline).

    Attributes:
      num_classes: number of output classes.
      backbone: the feature extraction module.
      base_resolution: side in pixels of every glimpse fed to the backbone.
      input_size: side of the full-resolution input the model is built for
        (used by profiling and data pipelines; the model accepts any size
        from which its levels can be reached).
      grid_size: n of the n x n grid of candidate cells.
      cell_fraction: side of a cell as a fraction of its parent's side.
      locations: default number of locations attended per level below the
        first, e.g. (2,) or (2, 1); overridden at call time.
      location_module: "context" (Table 4: the final feature vector is
        concatenated to every grid position) or "squeeze_excitation"
        (Table 5).
      location_width: channels of the hidden 1x1 convolutions of the
        location module.
      location_se_width: reduced width of its squeeze-excitation block.
      code_size: size of the sin/cos positional code of (x, y, scale).
      code_variant: "paper" (formula of Appendix B.1.2) or "release" (the
        authors' code: floor(N/6) frequencies 100^(-t/(K-1)), blocks ordered
        y, x, s, zero padded).
      positional_fusion: "concat_dense" (Table 4: [feature, code] -> Dense,
        linear) or "add_silu" (Table 5: SiLU(feature + Dense(code))).
      dropout: drop probability before the classification layer.
      feature_weighting: learn weights (summing to 1) over the extracted
        features instead of averaging them (CUB / NABirds).
      initializer: "glorot" (Xavier weights, zero biases) or "efficientnet"
        (the EfficientNet variance-scaling initialisers) for the TNet heads.
      grid_indices: the feature-map rows (and columns) the location module
        reads, one per grid row; None aligns them by receptive field (the
        paper). `release.load_model` sets the release's.
      integer_grid: cut the cells on whole pixels as the authors' release
        does (`geometry.integer_grid`): at every level the cell side is
        rounded, the stride rounded up and the glimpse zero-padded by what
        the grid overhangs; a cell's pixels come straight from the input
        and are then resized to the base resolution. False: cells are exact
        fractions of their parent, sampled bilinearly (the paper's wording).
        `release.load_model` sets it.
      location_stop_gradient: in training, detach the location module's
        inputs (the feature map and, variant "context", the feature vector),
        so the REINFORCE terms train the location module alone and the
        backbone learns from the classification terms only; inference is
        unchanged. The paper is silent; the authors' code stops them.
      location_normalize, location_scale, learn_location_scale: the
        location logits (`modules.location_logits`): L2-normalised (the
        paper) or raw, times a scale (1: the paper; a larger scale sharpens
        the distribution), fixed or learnt (starting at `location_scale`).
      glimpse_antialias: average k x k samples per glimpse pixel, k = the
        whole number of image pixels per glimpse pixel at that level (a box
        filter), so thin strokes survive a large downscale; needs images of
        static size (otherwise k = 1). False: one bilinear sample per pixel,
        as the paper's code resizes (no antialias).
    """

    num_classes: int = 62
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    base_resolution: int = 224
    input_size: int = 448
    grid_size: int = 3
    cell_fraction: float = 0.5
    locations: Tuple[int, ...] = (2,)
    location_module: str = "squeeze_excitation"
    location_width: int = 80
    location_se_width: int = 40
    code_size: int = 320
    code_variant: str = "paper"
    positional_fusion: str = "add_silu"
    dropout: float = 0.5
    feature_weighting: bool = False
    initializer: str = "efficientnet"
    location_stop_gradient: bool = True
    grid_indices: Optional[Tuple[int, ...]] = None
    integer_grid: bool = False
    location_normalize: bool = True
    location_scale: float = 1.0
    learn_location_scale: bool = False
    glimpse_antialias: bool = False

    def __post_init__(self):
        if isinstance(self.backbone, dict):
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))
        object.__setattr__(self, "locations", tuple(int(k) for k in self.locations))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.base_resolution < 32:
            raise ValueError(f"base_resolution must be >= 32 px, got {self.base_resolution}")
        if self.input_size < self.base_resolution:
            raise ValueError(f"input_size {self.input_size} is smaller than base_resolution "
                             f"{self.base_resolution}")
        if self.grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {self.grid_size}")
        if not 0.0 < self.cell_fraction <= 1.0:
            raise ValueError(f"cell_fraction must be in (0, 1], got {self.cell_fraction}")
        if self.grid_size > 1 and self.cell_fraction * self.grid_size < 1.0 - 1e-9:
            raise ValueError(f"a {self.grid_size}x{self.grid_size} grid of cells of fraction "
                             f"{self.cell_fraction} does not cover the image")
        budget.check(self.locations, self.grid_size)
        if self.grid_indices is not None:
            object.__setattr__(self, "grid_indices", tuple(int(i) for i in self.grid_indices))
            if len(self.grid_indices) != self.grid_size or min(self.grid_indices) < 0:
                raise ValueError(f"grid_indices must be {self.grid_size} indices >= 0, one per "
                                 f"grid row; got {self.grid_indices}")
        _check_choice("location_module", self.location_module, LOCATION_MODULES)
        _check_choice("code_variant", self.code_variant, CODE_VARIANTS)
        _check_choice("positional_fusion", self.positional_fusion, POSITIONAL_FUSIONS)
        _check_choice("initializer", self.initializer, INITIALIZERS)
        _check_probability("dropout", self.dropout)
        if not self.location_scale > 0:
            raise ValueError(f"location_scale must be > 0, got {self.location_scale}")

    @property
    def num_levels(self) -> int:
        return len(self.locations) + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TNetConfig":
        return cls(**values)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_probability(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value}")


def _imagenet() -> TNetConfig:
    # Table 4: BagNet-77, 5x5 grid of 34.375 % cells (77 px at 224), 1000 classes.
    return TNetConfig(
        num_classes=1000,
        backbone=BackboneConfig(name="bagnet77", spatial_dropout=0.5),
        base_resolution=77, input_size=224, grid_size=5, cell_fraction=0.34375,
        locations=(3,), location_module="context", location_width=512,
        code_size=512, positional_fusion="concat_dense", dropout=0.0,
        initializer="glorot")


def _fmow() -> TNetConfig:
    # Table 5: EfficientNet-B0, 3x3 grid of 50 % cells, 62 classes; train_448 stage.
    return TNetConfig(
        num_classes=62,
        backbone=BackboneConfig(name="efficientnet-b0", stochastic_depth=0.3),
        base_resolution=224, input_size=448, grid_size=3, cell_fraction=0.5,
        locations=(2,), location_module="squeeze_excitation", location_width=80,
        location_se_width=40, code_size=320, positional_fusion="add_silu", dropout=0.5,
        initializer="efficientnet")


def _birds(num_classes: int) -> TNetConfig:
    # The authors' fine-grained recipe: 448 input, 5x5 grid of 35 % cells, 5 locations,
    # ImageNet-pretrained EfficientNet, feature weighting.
    return dataclasses.replace(
        _fmow(), num_classes=num_classes,
        backbone=BackboneConfig(name="efficientnet-b0", stochastic_depth=0.5),
        grid_size=5, cell_fraction=0.35, locations=(5,), dropout=0.75,
        feature_weighting=True)


def _digits() -> TNetConfig:
    # The embedded demo (experiments.digits): cluttered 256 px digit canvases, a compact
    # CNN with batch norm per level at a 64 px base resolution, 3x3 grid of 50 % cells.
    return TNetConfig(
        num_classes=10, backbone=BackboneConfig(name="compact", width=16, norm="batch",
                                                convs_per_stage=(1, 2, 2, 2)),
        base_resolution=64, input_size=128, grid_size=3, cell_fraction=0.5, locations=(2,),
        location_module="squeeze_excitation", location_width=32, location_se_width=16,
        code_size=48, positional_fusion="add_silu", dropout=0.2, initializer="efficientnet")


def _tiny() -> TNetConfig:
    # A toy TNet for tests, `--smoke` and the learning benchmark: the compact CNN at
    # width 8 on a 32 px base, small location module and codes, no dropout.
    return TNetConfig(
        num_classes=5, backbone=BackboneConfig(name="compact", width=8), base_resolution=32,
        input_size=64, locations=(2,), location_width=16, location_se_width=8, code_size=24,
        dropout=0.0)


# The size of the model, which `--smoke` takes from "tiny" while keeping the
# dataset preset's geometry and modules.
TINY_SIZE_FIELDS = ("backbone", "base_resolution", "location_width", "location_se_width",
                    "code_size")

PRESETS = {
    "tiny": _tiny,
    "digits": _digits,
    "imagenet": _imagenet,
    "fmow": _fmow,
    "cub": lambda: _birds(200),
    "nabirds": lambda: _birds(555),
}


def get_preset(name: str, **overrides) -> TNetConfig:
    """Returns the named preset ("imagenet", "fmow", "cub", "nabirds", "digits", "tiny")
    with overrides.

    `backbone` may be overridden by a BackboneConfig, a dict of its fields or
    a backbone name, e.g. `get_preset("cub", backbone="efficientnet-b3")`.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]()
    backbone = overrides.pop("backbone", None)
    if isinstance(backbone, str):
        backbone = dataclasses.replace(config.backbone, name=backbone)
    elif isinstance(backbone, dict):
        backbone = dataclasses.replace(config.backbone, **backbone)
    if backbone is not None:
        overrides["backbone"] = backbone
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TNetConfig)}
    if unknown:
        raise ValueError(f"unknown TNetConfig field(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **overrides)
