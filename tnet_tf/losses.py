"""TNet's learning rule (section 4, Appendix A.1) as surrogate losses.

Every function returns per-example values; `TNet.train_step` reduces them
with the global batch size. The surrogate losses are built so that their
gradients are exactly the (negated) learning rules of the paper:

  eq. (1)/(8):  -d/dw log p(y | l, x)  -  lambda_f (R - b) d/dw log p(l | x)
  eq. (2a):     lambda_c * [classification] + lambda_f lambda_r * [REINFORCE]
  eq. (2b):     (1 - lambda_c) * mean over features of [classification of
                feature k alone] + lambda_f (1 - lambda_r) * mean over
                attended locations of [REINFORCE of location k with the
                reward R^k of feature k's own prediction]
  eq. (2):      L_r = (2a) + (2b); lambda_c = lambda_r = 1 gives eq. (1),
                i.e. per-feature regularization off.

The REINFORCE surrogate is `-stop_gradient(R - b) * log p(l | x)`: rewards
and the baseline are constants, so that term reaches the location module
(and the backbone layers feeding it) only through the log-probabilities of
the chosen locations. `log p(l | x)` is the sum of the chosen cells'
log-probabilities (the approximation of Appendix A.2); the log-probability
of a single location `l_k` in eq. (2b) is that of its own cell in its own
parent's distribution.

Per-feature terms follow the replication notes: every extracted feature
(the level-1 context included) is classified alone by the shared
classifier; every attended location has its own REINFORCE term. With
`max_feature_level` (e.g. 2 in the fMoW fine-tuning stage) only features,
and locations, of levels up to that cap enter these terms.

The baseline (eq. 7): b starts at 0.5 and after every training step
becomes `0.9 b + 0.1 * r`, with r the mean reward that the REINFORCE terms
compare with b, taken over the global batch of N * M examples (all
replicas, all Monte Carlo samples): `r = mean R^s` by eq. (7), and with
per-feature regularization on, as in the authors' code (the paper is
silent), `r = lambda_r * mean R^s + (1 - lambda_r) * mean R^k`, the mean of
R^k over every attended location inside the level cap and every example
(`tnet_loss`'s "baseline_reward"). Every advantage, R^s - b and R^k - b,
uses the same b, as it was before that step's update.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

BASELINE_INITIAL = 0.5
BASELINE_DECAY = 0.9
# "correct": the paper's 0/1 reward; "log_prob_gain": the gain in the true class's
# log-probability that the attended locations bring (`location_rewards`).
REWARDS = ("correct", "log_prob_gain")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the learning rule.

    Attributes:
      lambda_f: weight of the REINFORCE terms (eq. 1).
      lambda_c: share of the main classification term; 1 - lambda_c goes to
        the per-feature classification terms (eq. 2).
      lambda_r: share of the main REINFORCE term; 1 - lambda_r goes to the
        per-location REINFORCE terms.
      max_feature_level: only features of levels <= this enter per-feature
        regularization; None uses every level.
      contrastive_weight, contrastive_margin: the auxiliary contrastive
        loss of the authors' CUB / NABirds runs (`contrastive_loss`; weight
        100, margin 0.4 there); weight 0 turns it off.
      entropy_weight: beta of an entropy bonus, `-beta * H` added per
        example, H the mean entropy of its location distributions over the
        levels that chose cells (`location_entropy`); 0 (the paper) turns it
        off.
      reward: "correct" (the paper) or "log_prob_gain" (`location_rewards`).
    """

    lambda_f: float = 0.1
    lambda_c: float = 1.0
    lambda_r: float = 1.0
    max_feature_level: Optional[int] = None
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.4
    entropy_weight: float = 0.0
    reward: str = "correct"

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {self.reward!r}")
        if self.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.lambda_f < 0:
            raise ValueError(f"lambda_f must be >= 0, got {self.lambda_f}")
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if not -1.0 <= self.contrastive_margin <= 1.0:
            raise ValueError(f"contrastive_margin is a cosine, in [-1, 1]; got "
                             f"{self.contrastive_margin}")
        for name in ("lambda_c", "lambda_r"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_feature_level is not None and self.max_feature_level < 1:
            raise ValueError(f"max_feature_level must be >= 1, got {self.max_feature_level}")

    @property
    def per_feature(self) -> bool:
        return self.lambda_c < 1.0 or self.lambda_r < 1.0


def classification_loss(logits, labels):
    """-log p(y | ...) per example: logits [..., C], labels [...] -> [...]."""
    labels = tf.cast(labels, tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))


def rewards(logits, labels):
    """1.0 where the top-1 prediction is the label, else 0.0 (same shape as labels)."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)


def contrastive_loss(features, labels, margin: float):
    """Per-example terms of the authors' contrastive loss [N] on a batch of
    features [N, D]: with c the cosine similarity of two L2-normalised
    features (1e-10 added first, as the authors' code), row i is the mean
    over every j of the batch, i itself included, of `1 - c_ij` when the
    labels agree and `max(c_ij - margin, 0)` when they differ. Their mean
    over the batch is the authors' loss (the mean over all pairs of a
    replica's batch); summed and divided by the global batch, as `train_step`
    does, it is that loss averaged over replicas, as the authors' runs.
    """
    features = tf.math.l2_normalize(tf.cast(features, tf.float32) + 1e-10, axis=-1)
    cosine = tf.matmul(features, features, transpose_b=True)
    labels = tf.cast(labels, tf.int32)
    same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    pairs = same * (1.0 - cosine) + (1.0 - same) * tf.maximum(cosine - margin, 0.0)
    return tf.reduce_mean(pairs, axis=1)


def initial_baseline(reward: str) -> float:
    """b before the first step: 0.5 for 0/1 rewards (the paper), 0 for gains."""
    return BASELINE_INITIAL if reward == "correct" else 0.0


def true_class_log_prob(logits, labels):
    """log p(y | ...) of the label: logits [..., C], labels [...] -> [...]."""
    return -classification_loss(logits, labels)


def location_rewards(outputs: Dict, labels, reward: str = "correct"):
    """(R^s [N], R^k of every extracted feature [N, F]) for a TNet `outputs` dict.

    "correct": R^s = 1 where the prediction is the label (the paper), R^k
    the same for feature k classified alone. "log_prob_gain" (as GFNet
    rewards its glimpses): R^s = log p(y | all features) - log p(y | the
    level-1 feature alone), the gain all attended locations bring; R^k =
    log p(y | feature k alone) - log p(y | its parent's feature alone), the
    gain location k brings over the glimpse it was chosen from (0 for the
    level-1 feature, which no location chose).
    """
    labels = tf.cast(labels, tf.int32)
    feature_logits = outputs["feature_logits"]                       # [N, F, C]
    repeated = tf.repeat(labels[:, None], tf.shape(feature_logits)[1], axis=1)
    if reward == "correct":
        return rewards(outputs["logits"], labels), rewards(feature_logits, repeated)
    if reward != "log_prob_gain":
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {reward!r}")
    feature_log_probs = true_class_log_prob(feature_logits, repeated)   # [N, F]
    main = true_class_log_prob(outputs["logits"], labels) - feature_log_probs[:, 0]
    parents = np.maximum(np.asarray(tf.get_static_value(outputs["feature_parents"])), 0)
    return main, feature_log_probs - tf.gather(feature_log_probs, parents, axis=1)


def reinforce_loss(log_probs, reward, baseline):
    """-(R - b) log p(l | x) with R - b held constant: the REINFORCE surrogate."""
    advantage = tf.stop_gradient(tf.cast(reward, tf.float32) - tf.cast(baseline, tf.float32))
    return -advantage * log_probs


def update_baseline(baseline, mean_reward, decay: float = BASELINE_DECAY):
    """Eq. (7): b_n = decay * b_{n-1} + (1 - decay) * mean reward of batch n."""
    return decay * baseline + (1.0 - decay) * mean_reward


def tnet_loss(outputs: Dict, labels, baseline, weights: LossWeights) -> Dict[str, tf.Tensor]:
    """The per-example terms of eq. (2) for a TNet `outputs` dict.

    Returns [N] tensors: "total" (the weighted sum that is minimised),
    "classification" (-log p(y | l, x)), "reinforce" (main REINFORCE
    surrogate), "reward" (R^s), "baseline_reward" (what feeds the baseline:
    R^s, or with per-feature regularization lambda_r R^s + (1 - lambda_r)
    times the mean R^k) and, when per-feature regularization is on,
    "feature_classification" and "feature_reinforce" (the per-feature
    terms averaged over the features / locations in the level cap) and
    "feature_reward" (the mean R^k over those locations), with
    `entropy_weight` > 0 "entropy" (the bonus's H, before its weight), and with
    `contrastive_weight` > 0 "contrastive" (`contrastive_loss` of the
    pooled features, weighted).
    """
    labels = tf.cast(labels, tf.int32)
    log_probs = outputs["location_log_probs"]                        # [N, A]
    main_reward, every_feature_reward = location_rewards(outputs, labels, weights.reward)
    terms = {
        "classification": classification_loss(outputs["logits"], labels),
        "reinforce": reinforce_loss(tf.reduce_sum(log_probs, axis=-1), main_reward, baseline),
        "reward": main_reward,
        "baseline_reward": main_reward,
    }
    total = (weights.lambda_c * terms["classification"]
             + weights.lambda_f * weights.lambda_r * terms["reinforce"])
    if weights.per_feature:
        levels = np.asarray(tf.get_static_value(outputs["feature_levels"]))
        cap = weights.max_feature_level or int(levels.max())
        features = np.flatnonzero(levels <= cap)               # always holds level 1
        attended = features[features > 0] - 1                   # feature j <-> location j - 1
        feature_logits = tf.gather(outputs["feature_logits"], features, axis=1)
        per_feature = classification_loss(
            feature_logits, tf.repeat(labels[:, None], len(features), axis=1))
        terms["feature_classification"] = tf.reduce_mean(per_feature, axis=1)
        if attended.size:
            feature_reward = tf.gather(every_feature_reward, attended + 1, axis=1)
            per_location = reinforce_loss(tf.gather(log_probs, attended, axis=1),
                                          feature_reward, baseline)
            terms["feature_reinforce"] = tf.reduce_mean(per_location, axis=1)
            terms["feature_reward"] = tf.reduce_mean(feature_reward, axis=1)
            # Every example has as many locations in the cap, so the global mean of
            # this per-example mix is lambda_r mean R^s + (1 - lambda_r) mean R^k.
            terms["baseline_reward"] = (weights.lambda_r * main_reward
                                        + (1.0 - weights.lambda_r) * terms["feature_reward"])
        else:
            terms["feature_reinforce"] = tf.zeros_like(main_reward)
        total += ((1.0 - weights.lambda_c) * terms["feature_classification"]
                  + weights.lambda_f * (1.0 - weights.lambda_r) * terms["feature_reinforce"])
    if weights.entropy_weight and outputs["location_probs"]:
        terms["entropy"] = tf.add_n([location_entropy(probs) for probs
                                     in outputs["location_probs"]]) / len(
                                         outputs["location_probs"])
        total -= weights.entropy_weight * terms["entropy"]
    if weights.contrastive_weight:
        terms["contrastive"] = weights.contrastive_weight * contrastive_loss(
            outputs["pooled_features"], labels, weights.contrastive_margin)
        total += terms["contrastive"]
    terms["total"] = total
    return terms


def mgnet_loss(step_logits, glimpse_logits, labels, glimpse_weight: float) -> Dict[str, tf.Tensor]:
    """MGNet's eqs. (6)-(8) per example: the global loss (cross-entropy of the
    global classifier, averaged over the T steps), the glimpse loss (the same
    for the glimpse classifier) and total = alpha * glimpse + (1 - alpha) *
    global. step_logits, glimpse_logits: [B, T, classes]; labels [B]."""
    steps = tf.shape(step_logits)[1]
    repeated = tf.repeat(tf.cast(labels, tf.int32)[:, None], steps, axis=1)
    global_loss = tf.reduce_mean(classification_loss(step_logits, repeated), axis=1)
    glimpse_loss = tf.reduce_mean(classification_loss(glimpse_logits, repeated), axis=1)
    return {"total": glimpse_weight * glimpse_loss + (1.0 - glimpse_weight) * global_loss,
            "global": global_loss, "glimpse": glimpse_loss}


def location_entropy(location_probs):
    """Mean entropy (nats) of the location distributions of one level [N, P, K] -> [N]."""
    probs = tf.cast(location_probs, tf.float32)
    entropy = -tf.reduce_sum(probs * tf.math.log(tf.maximum(probs, 1e-12)), axis=-1)
    return tf.reduce_mean(entropy, axis=-1)
