"""Training TNet with Keras `fit`: options, optimizer, metrics and the steps.

    model = tnet_tf.TNet(config)
    optimizer = training.make_optimizer(1e-3, total_steps)
    model.compile(optimizer, lambda_f=0.1, lambda_c=0.2, lambda_r=0.2)
    model.fit(dataset, epochs=..., steps_per_epoch=...,
              callbacks=checkpoints.training_callbacks(model_dir, save_every=500))

`TNet` and `Classifier` here are the forward models of `tnet_tf.tnet` with
their learning rule: `compile` keeps its options and metrics on the model,
and Keras' `fit` / `evaluate` call the overridden `train_step` /
`test_step`; the trackers are listed in `metrics`. One
step with N replicas equals one step on one device with the same global
batch: the per-example losses are summed and divided by the global batch
(`tf.nn.compute_average_loss`), the weight decay is split across replicas
(`tf.nn.scale_regularization_loss`), the gradients are summed by the
optimizer's all-reduce, the baseline is updated once from the global mean
of its reward (`losses`; an all-reduce in the replica context; every replica computes the
same value and the variable keeps the first replica's), and Keras metrics
sum their state across replicas.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence, Tuple

import tensorflow as tf

from tnet_tf import losses, tnet
from tnet_tf.backbones import LevelBatchNormalization, level_batch_norms


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """What `TNet.compile` sets besides the optimizer (kept as `model.training_options`).

    Attributes:
      loss_weights: lambda_f, lambda_c, lambda_r and the per-feature level cap.
      monte_carlo_samples: M; every image is processed M times per step (the
        batch is repeated). Distinct samples need selection="sample".
      selection: "top_k" (the paper) or "sample" (Gumbel-top-k).
      locations: locations per level during training; None: the config's.
      evaluation_locations: locations per level in `evaluate`; None: as in
        training.
      weight_decay: L2 factor; adds `weight_decay * sum(w ** 2)` (the Keras
        `L2` regulariser convention) over every trainable variable except
        the scales and offsets of normalisation layers.
      random_warmup_steps: for this many first optimizer steps the training
        locations are drawn uniformly at random instead of by `selection`;
        the learning rule is unchanged (the REINFORCE terms use the chosen
        cells' log-probabilities). It keeps a policy that is still random
        from locking onto cells that never show the object: the classifier
        first learns from objects found by chance, then the policy follows.
      exploration_epsilon, exploration_steps: epsilon-random exploration
        after the warm-up: each glimpse draws random cells with probability
        epsilon, decayed linearly to 0 over `exploration_steps` steps (0:
        held for all of training); epsilon 0 (the paper) turns it off
        (`exploration_probability`).
    """

    loss_weights: losses.LossWeights = dataclasses.field(default_factory=losses.LossWeights)
    monte_carlo_samples: int = 1
    selection: str = "top_k"
    locations: Optional[Tuple[int, ...]] = None
    evaluation_locations: Optional[Tuple[int, ...]] = None
    weight_decay: float = 0.0
    random_warmup_steps: int = 0
    exploration_epsilon: float = 0.0
    exploration_steps: int = 0

    def __post_init__(self):
        if self.monte_carlo_samples < 1:
            raise ValueError(f"monte_carlo_samples must be >= 1, got {self.monte_carlo_samples}")
        if self.selection not in tnet.SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(tnet.SELECTIONS)}; "
                             f"got {self.selection!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.random_warmup_steps < 0:
            raise ValueError(f"random_warmup_steps must be >= 0, got {self.random_warmup_steps}")
        if not 0.0 <= self.exploration_epsilon <= 1.0:
            raise ValueError(f"exploration_epsilon must be in [0, 1], got "
                             f"{self.exploration_epsilon}")
        if self.exploration_steps < 0:
            raise ValueError(f"exploration_steps must be >= 0, got {self.exploration_steps}")


def exploration_probability(step, options: TrainingOptions):
    """The probability that a glimpse draws random cells at optimizer step
    `step` (None: never): 1 during the random warm-up; then epsilon *
    (1 - s / exploration_steps), s the steps since the warm-up, down to 0
    (held at epsilon when exploration_steps is 0). Without epsilon it is the
    warm-up's boolean switch."""
    warmup = options.random_warmup_steps
    if not options.exploration_epsilon:
        return step < warmup if warmup else None
    after = tf.cast(step - warmup, tf.float32)
    decay = (tf.maximum(0.0, 1.0 - after / options.exploration_steps)
             if options.exploration_steps else 1.0)
    return tf.where(step < warmup, 1.0, options.exploration_epsilon * decay)


class DropOnceSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` until `drop_at * total_steps`, then `learning_rate * factor`."""

    def __init__(self, learning_rate: float, total_steps: int, drop_at: float = 0.8,
                 factor: float = 0.1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.learning_rate, self.total_steps = float(learning_rate), int(total_steps)
        self.drop_at, self.factor = float(drop_at), float(factor)
        self.drop_step = int(round(self.drop_at * self.total_steps))

    def __call__(self, step):
        dropped = tf.cast(step, tf.int64) >= self.drop_step
        return tf.where(dropped, self.learning_rate * self.factor, self.learning_rate)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "drop_at": self.drop_at, "factor": self.factor}


SCHEDULES = ("drop", "cosine")


def make_optimizer(learning_rate: float, total_steps: int, drop_at: float = 0.8,
                   factor: float = 0.1, schedule: str = "drop") -> tf.keras.optimizers.Optimizer:
    """Adam (beta1 0.9, beta2 0.999, eps 1e-7: the Keras defaults the authors
    used) with the learning rate either
    dropped once by `factor` at `drop_at` of the training steps ("drop", the
    paper's recipes) or decayed to 0 along a cosine over `total_steps`
    ("cosine")."""
    if schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    elif schedule == "drop":
        rate = DropOnceSchedule(learning_rate, total_steps, drop_at, factor)
    else:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    return tf.keras.optimizers.Adam(rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7)


def current_learning_rate(optimizer) -> tf.Tensor:
    """The learning rate of the optimizer's next step."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)   # loss-scaled (float16)
    rate = optimizer._learning_rate  # the schedule or the variable, as passed
    if isinstance(rate, tf.keras.optimizers.schedules.LearningRateSchedule):
        return tf.cast(rate(optimizer.iterations), tf.float32)
    return tf.cast(tf.convert_to_tensor(optimizer.learning_rate), tf.float32)


def decayed_variables(model: tf.keras.Model):
    """Trainable variables that L2 weight decay applies to: all but the scales
    and offsets of normalisation layers (batch, group and layer norm)."""
    normalization = (tf.keras.layers.BatchNormalization, tf.keras.layers.GroupNormalization,
                     tf.keras.layers.LayerNormalization, LevelBatchNormalization)
    skipped = {id(v) for layer in model.submodules if isinstance(layer, normalization)
               for v in layer.trainable_variables}
    return [v for v in model.trainable_variables if id(v) not in skipped]


def l2_penalty(variables, weight_decay: float):
    return weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                    for v in variables])


def repeat_samples(images, labels, samples: int):
    """The batch repeated M times: sample m of image i sits at m * N + i."""
    if samples == 1:
        return images, labels
    return (tf.tile(images, [samples] + [1] * (images.shape.rank - 1)),
            tf.tile(labels, [samples]))


def global_mean(values):
    """Mean of `values` over the global batch (all replicas)."""
    context = tf.distribute.get_replica_context()
    local = tf.stack([tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)])
    if context is not None:
        local = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
    return local[0] / local[1]


def distribution_levels(locations: Tuple[int, ...]) -> int:
    """How many levels compute a location distribution for a budget."""
    count = 0
    for k in locations:
        count += 1
        if k == 0:
            break
    return count


class LatestValue(tf.keras.metrics.Metric):
    """The last value given to `update_state` (e.g. the baseline after a step).

    Meant for values every replica holds identically; the first replica's
    value is reported.
    """

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_weight("value", initializer="zeros",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update_state(self, value):
        self.value.assign(tf.cast(value, self.dtype))

    def result(self):
        return tf.identity(self.value)


class TrainingMetrics:
    """The Keras metrics of training and evaluation, created by `TNet.compile`
    (kept as `model.training_metrics`)."""

    def __init__(self, options: TrainingOptions, locations: Tuple[int, ...], num_classes: int):
        weights = options.loss_weights
        names = ["loss", "classification", "reinforce", "reward"]
        if weights.per_feature:
            names += ["feature_classification", "feature_reinforce", "feature_reward"]
        if weights.contrastive_weight:
            names.append("contrastive")
        if options.weight_decay:
            names.append("weight_decay")
        if weights.entropy_weight:
            names.append("entropy")
        self.means = {name: tf.keras.metrics.Mean(name) for name in names}
        self.entropy = [tf.keras.metrics.Mean(f"location_entropy_l{level + 2}")
                        for level in range(distribution_levels(locations))]
        self.latest = {name: LatestValue(name)
                       for name in ("baseline", "learning_rate", "locations_per_image")}
        self.top1 = tf.keras.metrics.SparseCategoricalAccuracy("top1")
        self.top5 = tf.keras.metrics.SparseTopKCategoricalAccuracy(min(5, num_classes), "top5")

    @property
    def all(self):
        return (list(self.means.values()) + [self.top1, self.top5] + self.entropy
                + list(self.latest.values()))

    def update(self, terms, outputs, labels, penalty=None, **latest):
        """Updates the means from per-example terms; `latest` sets LatestValue metrics."""
        for name, value in latest.items():
            self.latest[name].update_state(value)
        for name, metric in self.means.items():
            if name == "loss":
                extra = 0.0 if penalty is None else penalty
                metric.update_state(terms["total"] + extra)
            elif name == "weight_decay":
                if penalty is not None:
                    metric.update_state(penalty)
            elif name in terms:
                metric.update_state(terms[name])
        self.top1.update_state(labels, outputs["logits"])
        self.top5.update_state(labels, outputs["logits"])
        for metric, probs in zip(self.entropy, outputs["location_probs"]):
            metric.update_state(losses.location_entropy(probs))

    def results(self):
        return {metric.name: metric.result() for metric in self.all}


def log_global_metrics(model) -> None:
    """Under MultiWorkerMirroredStrategy a metric read inside a replica is
    already global, and Keras' default step-log reduction (a sum over the
    workers) would log it times the worker count: log the first replica's."""
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model.distribute_reduction_method = "first"


def loss_scaler(model):
    """The LossScaleOptimizer Keras `compile` wraps around the optimizer under a
    mixed_float16 policy, or None."""
    optimizer = model.optimizer
    return optimizer if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer) \
        else None


def apply_gradients(model, tape, loss):
    """Gradients of `loss` (already scaled under mixed_float16) applied by the
    optimizer, and by the backbone optimizer to the backbone if there is one."""
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    if loss_scaler(model) is not None:
        gradients = loss_scaler(model).get_unscaled_gradients(gradients)
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    backbone_optimizer = getattr(model, "backbone_optimizer", None)
    if backbone_optimizer is None:
        model.optimizer.apply_gradients(pairs)
        return
    in_backbone = {id(v) for v in model.backbone.trainable_variables}
    model.optimizer.apply_gradients([p for p in pairs if id(p[1]) not in in_backbone])
    backbone_optimizer.apply_gradients([p for p in pairs if id(p[1]) in in_backbone])


def recalibrate_batch_norm(model, dataset: Iterable, steps: int, locations=None) -> int:
    """Re-estimates the moving statistics of every `LevelBatchNormalization`
    with the final weights: each level's mean and variance become the
    average of its batch statistics over `steps` batches of `dataset`
    ((images, labels, ...) tuples; TNet at `locations`, its configured budget
    by default). Moving averages lag the weights, and on near-constant inputs
    the lag shows (docs/design_notes.md). The forward pass
    is one traced function whose momentum is a variable; returns the batches
    used (0 if the model has no such layer)."""
    norms = [norm for layer in level_batch_norms(model.backbone) for norm in layer.norms]
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    # A variable momentum is read when the traced graph runs (Keras then takes
    # its unfused moving-average update): new = m * old + (1 - m) * batch.
    momentum = tf.Variable(0.0, trainable=False, name="recalibration_momentum")
    kwargs = {"locations": locations} if hasattr(model, "resolve_locations") else {}
    forward = tf.function(lambda images: model(images, training=True, **kwargs),
                          reduce_retracing=True)
    used = 0
    try:
        for norm in norms:
            norm.momentum = momentum
        for batch in dataset:
            if used == steps:
                break
            momentum.assign(used / (used + 1))   # a running mean of the batch statistics
            forward(batch[0])
            used += 1
    finally:
        for norm, original in zip(norms, momenta):
            norm.momentum = original
    return used


class TNet(tnet.TNet):
    """`tnet.TNet` with its learning rule: `compile` sets the options and
    metrics, `fit` runs `train_step` (eq. 2 and the baseline update of eq. 7)."""

    def compile(self, optimizer="adam", *, lambda_f: float = 0.1, lambda_c: float = 1.0,
                lambda_r: float = 1.0, max_feature_level: Optional[int] = None,
                monte_carlo_samples: int = 1, selection: str = "top_k",
                locations: Optional[Sequence[int]] = None,
                evaluation_locations: Optional[Sequence[int]] = None,
                weight_decay: float = 0.0, backbone_optimizer=None,
                random_warmup_steps: int = 0, contrastive_weight: float = 0.0,
                contrastive_margin: float = 0.4, entropy_weight: float = 0.0,
                reward: str = "correct", exploration_epsilon: float = 0.0,
                exploration_steps: int = 0, **kwargs):
        """Sets the learning rule of `fit` (see `losses` and this module).

        lambda_f, lambda_c, lambda_r: eq. (2); lambda_c = lambda_r = 1 is
        eq. (1), i.e. per-feature regularization off. max_feature_level:
        the per-feature level cap. monte_carlo_samples: M. selection:
        "top_k" or "sample". locations / evaluation_locations: budgets of
        `fit` / `evaluate` (None: the config's). weight_decay: L2 factor
        (batch norm excluded). backbone_optimizer: an optional second
        optimizer (e.g. a lower learning rate) for the backbone variables.
        random_warmup_steps: the first optimizer steps attend uniformly
        random cells (see `TrainingOptions`). contrastive_weight,
        contrastive_margin: the authors' auxiliary contrastive loss on the
        pooled features (`losses.contrastive_loss`; 0 turns it off).
        entropy_weight, reward: the entropy bonus and the reward of the
        REINFORCE terms (`losses.LossWeights`). exploration_epsilon,
        exploration_steps: epsilon-random cells after the warm-up
        (`TrainingOptions`). The options beyond the paper default to off.
        Creates the baseline b (0.5; 0 for gain rewards) on first compile;
        recompiling keeps it.
        """
        super().compile(optimizer=optimizer, **kwargs)
        log_global_metrics(self)
        self.xla_compatible = bool(kwargs.get("jit_compile"))
        weights = losses.LossWeights(lambda_f, lambda_c, lambda_r, max_feature_level,
                                     contrastive_weight, contrastive_margin, entropy_weight,
                                     reward)
        self.training_options = TrainingOptions(
            weights, monte_carlo_samples, selection,
            self.resolve_locations(locations),
            None if evaluation_locations is None else self.resolve_locations(evaluation_locations),
            weight_decay, random_warmup_steps, exploration_epsilon, exploration_steps)
        self.backbone_optimizer = (tf.keras.optimizers.get(backbone_optimizer)
                                   if backbone_optimizer is not None else None)
        self.training_metrics = TrainingMetrics(
            self.training_options, self.training_options.locations, self.config.num_classes)
        if getattr(self, "baseline", None) is None:
            with self.distribute_strategy.scope():
                # Written once per step with the same value on every replica.
                self.baseline = tf.Variable(
                    losses.initial_baseline(reward), trainable=False, name="baseline",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    @property
    def metrics(self):
        metrics = getattr(self, "training_metrics", None)
        return super().metrics if metrics is None else metrics.all

    def train_step(self, data):
        """One step of the learning rule of eq. (2) and the baseline update of eq. (7)."""
        images, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        options = self.training_options
        images, labels = repeat_samples(images, tf.cast(labels, tf.int32),
                                        options.monte_carlo_samples)
        learning_rate = current_learning_rate(self.optimizer)
        penalty = None
        random_cells = exploration_probability(self.optimizer.iterations, options)
        with tf.GradientTape() as tape:
            outputs = self(images, locations=options.locations, training=True,
                           selection=options.selection, random_cells=random_cells)
            terms = losses.tnet_loss(outputs, labels, self.baseline, options.loss_weights)
            loss = tf.nn.compute_average_loss(terms["total"])
            if options.weight_decay:
                penalty = l2_penalty(decayed_variables(self), options.weight_decay)
                loss += tf.nn.scale_regularization_loss(penalty)
            if loss_scaler(self) is not None:
                loss = loss_scaler(self).get_scaled_loss(loss)
        apply_gradients(self, tape, loss)
        self.baseline.assign(losses.update_baseline(self.baseline,
                                                    global_mean(terms["baseline_reward"])))
        self.training_metrics.update(
            terms, outputs, labels, penalty, baseline=self.baseline, learning_rate=learning_rate,
            locations_per_image=outputs["cells"].shape[1])
        return self.training_metrics.results()

    def test_step(self, data):
        """Evaluation: top-k locations, the same loss terms, no updates."""
        images, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        options = self.training_options
        labels = tf.cast(labels, tf.int32)
        locations = options.evaluation_locations or options.locations
        outputs = self(images, locations=locations, training=False)
        terms = losses.tnet_loss(outputs, labels, self.baseline, options.loss_weights)
        self.training_metrics.update(terms, outputs, labels, baseline=self.baseline,
                                     locations_per_image=outputs["cells"].shape[1])
        return self.training_metrics.results()


class Classifier(tnet.Classifier):
    """`tnet.Classifier` trained by Keras' own step, plus the authors'
    optional contrastive term."""

    def compile(self, optimizer="rmsprop", *, contrastive_weight: float = 0.0,
                contrastive_margin: float = 0.4, **kwargs):
        """Keras `compile`; contrastive_weight > 0 adds the authors' contrastive
        loss on the pooled backbone features (`losses.contrastive_loss`, as
        their CUB / NABirds baselines) to the compiled loss in `fit`."""
        super().compile(optimizer=optimizer, **kwargs)
        log_global_metrics(self)
        self.contrastive = losses.LossWeights(contrastive_weight=contrastive_weight,
                                              contrastive_margin=contrastive_margin)
        self.contrastive_tracker = (tf.keras.metrics.Mean("contrastive")
                                    if contrastive_weight else None)

    @property
    def metrics(self):
        tracker = getattr(self, "contrastive_tracker", None)
        return super().metrics + ([tracker] if tracker is not None else [])

    def train_step(self, data):
        if getattr(self, "contrastive_tracker", None) is None:
            return super().train_step(data)
        images, labels, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            logits, pooled = self(images, training=True, return_features=True)
            contrastive = self.contrastive.contrastive_weight * losses.contrastive_loss(
                pooled, labels, self.contrastive.contrastive_margin)
            # Keras' `compute_loss` with the replica's mean contrastive loss as one
            # more regularization loss: it enters the "loss" metric, and Keras
            # scales it per replica like the others.
            loss = self.compiled_loss(labels, logits, sample_weight,
                                      regularization_losses=self.losses
                                      + [tf.reduce_mean(contrastive)])
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        self.contrastive_tracker.update_state(contrastive)
        return self.compute_metrics(images, labels, logits, sample_weight)
